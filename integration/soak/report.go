package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/stalk-dev/stalk/amqp"
)

// reportLine is one report: cumulative counts, and the interval's rate and
// latencies.
type reportLine struct {
	Type        string  `json:"type"` // "report"
	Elapsed     float64 `json:"elapsed_s"`
	Sent        int64   `json:"sent"`
	Completed   int64   `json:"completed"`
	Rate        float64 `json:"rate_per_s"` // completions per second in the interval
	Pending     int     `json:"pending"`    // the client's Stats().Pending
	Outstanding int     `json:"outstanding"`
	Lost        int     `json:"lost"` // outstanding for longer than the deadline
	Wrong       int64   `json:"wrong"`
	Failed      int64   `json:"failed"`
	Twice       int64   `json:"settled_twice"`
	SendErrors  int64   `json:"send_errors"`
	Duplicates  int64   `json:"duplicates"`
	Orphans     int64   `json:"orphans"`
	Reconnects  int64   `json:"reconnects"`
	Unreachable int64   `json:"unreachable"`
	Faults      int     `json:"faults"`
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
	Max         float64 `json:"max_ms"`
	RSSMB       float64 `json:"rss_mb"`
	HeapMB      float64 `json:"heap_mb"`
	Goroutines  int     `json:"goroutines"`
	ReplyQueues int     `json:"reply_queues"` // -1: rabbitmqctl did not answer
	Channels    int     `json:"channels"`
	Nodes       string  `json:"nodes,omitempty"` // cluster: the running nodes
}

func (s *soak) reporter(ctx context.Context) {
	t := time.NewTicker(s.cfg.report)
	defer t.Stop()
	var prev int64
	prevAt := s.start
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			l := s.snapshot(ctx, prev, now.Sub(prevAt))
			prev, prevAt = l.Completed, now
			s.printLine(l)
		}
	}
}

func (s *soak) snapshot(ctx context.Context, prevCompleted int64, interval time.Duration) reportLine {
	st := s.client.Stats()
	s.mu.Lock()
	lat := s.lat
	s.lat = nil
	outstanding := len(s.outstanding)
	lost := 0
	cut := time.Now().Add(-s.cfg.deadline)
	for _, t := range s.outstanding {
		if t.sent.Before(cut) {
			lost++
		}
	}
	faults := len(s.faults)
	s.mu.Unlock()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	completed := s.completed.Load()
	l := reportLine{
		Type:        "report",
		Elapsed:     round1(s.elapsed().Seconds()),
		Sent:        s.sent.Load(),
		Completed:   completed,
		Rate:        round1(float64(completed-prevCompleted) / interval.Seconds()),
		Pending:     st.Pending,
		Outstanding: outstanding,
		Lost:        lost,
		Wrong:       s.wrong.Load(),
		Failed:      s.errored.Load(),
		Twice:       s.twice.Load(),
		SendErrors:  s.sendErrors.Load(),
		Duplicates:  st.Duplicates,
		Orphans:     st.Orphans,
		Reconnects:  st.Reconnects,
		Unreachable: st.Unreachable,
		Faults:      faults,
		P50:         ms(pctOf(lat, 0.5)),
		P99:         ms(pctOf(lat, 0.99)),
		Max:         ms(pctOf(lat, 1)),
		RSSMB:       round1(rssMB()),
		HeapMB:      round1(float64(ms0.HeapAlloc) / (1 << 20)),
		Goroutines:  runtime.NumGoroutine(),
		ReplyQueues: s.replyQueues(ctx),
		Channels:    st.Channels,
	}
	if s.env.cluster != nil {
		nctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
		l.Nodes = s.env.cluster.runningNodes(nctx)
		cancel()
	}
	return l
}

// replyQueues counts the broker's queues named with the client's reply
// prefix.
func (s *soak) replyQueues(ctx context.Context) int {
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	qs, err := queuesWithPrefix(qctx, s.env.ctl, s.replyPrefix)
	if err != nil {
		return -1
	}
	return len(qs)
}

func (s *soak) printLine(l reportLine) {
	rq := strconv.Itoa(l.ReplyQueues)
	if l.ReplyQueues < 0 {
		rq = "?"
	}
	fmt.Printf("[%s] completed %d (%.1f/s) pending %d lost %d wrong %d settled-twice %d failed %d send-errors %d duplicates %d orphans %d reconnects %d | latency p50 %.1f p99 %.1f max %.0f ms | rss %.1f MB heap %.1f MB goroutines %d reply-queues %s%s\n",
		fmtDur(time.Duration(l.Elapsed*float64(time.Second))), l.Completed, l.Rate, l.Pending, l.Lost, l.Wrong, l.Twice, l.Failed, l.SendErrors,
		l.Duplicates, l.Orphans, l.Reconnects, l.P50, l.P99, l.Max, l.RSSMB, l.HeapMB, l.Goroutines, rq, nodesSuffix(l.Nodes))
	if s.cfg.jsonOut {
		printJSON(l)
	}
}

func nodesSuffix(nodes string) string {
	if nodes == "" {
		return ""
	}
	return " nodes-up " + nodes
}

func printJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// summary is the run's outcome.
type summary struct {
	Type           string         `json:"type"` // "summary"
	Mode           string         `json:"mode"`
	Cluster        bool           `json:"cluster"`
	Duration       float64        `json:"duration_s"`
	Drain          float64        `json:"drain_s"` // from the end of sending until the last result or the deadline
	Sent           int64          `json:"sent"`
	Completed      int64          `json:"completed"`
	Rate           float64        `json:"rate_per_s"`
	Lost           int            `json:"lost"`
	Wrong          int64          `json:"wrong"`
	Failed         int64          `json:"failed"`
	Twice          int64          `json:"settled_twice"`
	SendErrors     int64          `json:"send_errors"`
	SendErrKinds   map[string]int `json:"send_error_kinds"`
	Duplicates     int64          `json:"duplicates"`
	Received       int64          `json:"received"`
	Orphans        int64          `json:"orphans"`
	Reconnects     int64          `json:"reconnects"`
	Unreachable    int64          `json:"unreachable"`
	P50            float64        `json:"p50_ms"`
	P99            float64        `json:"p99_ms"`
	Max            float64        `json:"max_ms"`
	RSSMB          float64        `json:"rss_mb"`
	HeapMB         float64        `json:"heap_mb"`
	Goroutines     int            `json:"goroutines"`
	ReplyQueues    int            `json:"reply_queues"`
	Forgotten      int64          `json:"forgotten,omitempty"`
	ForgetErrors   int64          `json:"forget_errors,omitempty"`
	WorkerRestarts int64          `json:"worker_restarts"`
	Processed      int64          `json:"worker_results"` // results the echo worker published (redeliveries included)
	Faults         []faultRecord  `json:"faults"`
	LostTasks      []string       `json:"lost_tasks,omitempty"` // the first few
	LostByCause    map[string]int `json:"lost_by_cause,omitempty"`
	// With -confirm-results: lost tasks by their cause and what the broker
	// answered to the worker's result.
	LostByOutcome map[string]int `json:"lost_by_outcome,omitempty"`
	Problems      []string       `json:"problems,omitempty"` // the first wrong, failed and settled-twice tasks
	Interrupted   string         `json:"interrupted,omitempty"`
	Result        string         `json:"result"` // PASS or FAIL
}

func (s summary) faultErrors() int {
	n := 0
	for _, f := range s.Faults {
		if f.Err != "" {
			n++
		}
	}
	return n
}

func (s summary) failed() bool {
	return s.Lost > 0 || s.Wrong > 0 || s.Failed > 0 || s.Twice > 0
}

// summarize ends the count: what is still outstanding is lost. It looks at
// the first lost tasks more closely: what Get says, and whether their reply
// queue and the task queue hold anything.
func (s *soak) summarize(ctx context.Context, drained time.Duration) summary {
	s.mu.Lock()
	s.final = true
	var lost []*task
	for _, t := range s.outstanding {
		lost = append(lost, t)
	}
	faults := append([]faultRecord(nil), s.faults...)
	problems := append([]string(nil), s.samples...)
	kinds := map[string]int{}
	for k, v := range s.sendErrs {
		kinds[k] = int(v)
	}
	p50, p99, mx := s.allLat.pct(0.5), s.allLat.pct(0.99), s.allLat.max
	s.mu.Unlock()
	sort.Slice(lost, func(i, j int) bool { return lost[i].seq < lost[j].seq })

	st := s.client.Stats()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	dur := s.cfg.duration
	if e := s.elapsed() - drained; e < dur {
		dur = e
	}
	sum := summary{
		Type: "summary", Mode: s.cfg.modeName, Cluster: s.env.cluster != nil,
		Duration: round1(dur.Seconds()), Drain: round1(drained.Seconds()),
		Sent: s.sent.Load(), Completed: s.completed.Load(),
		Lost: len(lost), Wrong: s.wrong.Load(), Failed: s.errored.Load(), Twice: s.twice.Load(),
		SendErrors: s.sendErrors.Load(), SendErrKinds: kinds,
		Duplicates: st.Duplicates, Received: st.Received, Orphans: st.Orphans,
		Reconnects: st.Reconnects, Unreachable: st.Unreachable,
		P50: ms(p50), P99: ms(p99), Max: ms(mx),
		RSSMB: round1(rssMB()), HeapMB: round1(float64(m.HeapAlloc) / (1 << 20)), Goroutines: runtime.NumGoroutine(),
		ReplyQueues:    s.replyQueues(ctx),
		Forgotten:      s.forgotten.Load(),
		ForgetErrors:   s.forgetErr.Load(),
		WorkerRestarts: s.workerRestarts.Load(),
		Processed:      s.processed(),
		Faults:         faults,
		Problems:       problems,
	}
	if sum.Duration > 0 {
		sum.Rate = round1(float64(sum.Completed) / sum.Duration)
	}
	var brokerView map[string]string
	s.mu.Lock()
	failedTasks := append([]*task(nil), s.failedTasks...)
	s.mu.Unlock()
	if len(lost) > 0 || len(failedTasks) > 0 {
		brokerView = s.queueCounts(ctx)
	}
	for _, t := range failedTasks {
		// A failure that says the reply queue was deleted: is it there?
		q := s.client.ReplyQueue(t.r.ID())
		if v, ok := brokerView[q]; ok {
			sum.Problems = append(sum.Problems, fmt.Sprintf("failed task %d (%s): at the end its reply queue %s exists (%s)", t.seq, t.r.ID(), q, v))
		} else if brokerView != nil {
			sum.Problems = append(sum.Problems, fmt.Sprintf("failed task %d (%s): at the end its reply queue %s does not exist", t.seq, t.r.ID(), q))
		}
	}
	var causeOf map[*task]string
	sum.LostByCause, causeOf = s.lostByCause(lost, faults, brokerView)
	if s.cfg.confirm && len(lost) > 0 {
		sum.LostByOutcome = map[string]int{}
		for _, t := range lost {
			sum.LostByOutcome[causeOf[t]+" | "+s.outcomeKinds(t.r.ID())]++
		}
	}
	// Look closer at up to 4 lost tasks of each cause, 12 in all.
	perCause := map[string]int{}
	var pick []*task
	for _, t := range lost {
		if c := causeOf[t]; perCause[c] < 4 && len(pick) < 12 {
			perCause[c]++
			pick = append(pick, t)
		}
	}
	describeUntil := time.Now().Add(time.Minute)
	for i, t := range pick {
		if time.Now().After(describeUntil) {
			sum.LostTasks = append(sum.LostTasks, fmt.Sprintf("... %d more not looked at (out of time)", len(pick)-i))
			break
		}
		sum.LostTasks = append(sum.LostTasks, "["+causeOf[t]+"] "+s.describeLost(t, faults, brokerView))
	}
	if len(lost) > len(pick) {
		sum.LostTasks = append(sum.LostTasks, fmt.Sprintf("... and %d more", len(lost)-len(pick)))
	}
	sum.Result = "PASS"
	if sum.failed() {
		sum.Result = "FAIL"
	}
	return sum
}

// describeLost says what is known of a lost task: when it was sent, the
// fault before it, what a short Get returns (ErrResultLost says the
// client knew its reply queue was unreachable or its connection lost), and
// what its reply queue and the task queue hold.
func (s *soak) describeLost(t *task, faults []faultRecord, brokerView map[string]string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	at := t.sent.Sub(s.start)
	b := &strings.Builder{}
	fmt.Fprintf(b, "task %d %s sent at %s", t.seq, t.r.ID(), fmtDur(at))
	if s.cfg.confirm {
		fmt.Fprintf(b, "; the worker's result: %s", s.outcome(t.r.ID()))
	}
	for i := len(faults) - 1; i >= 0; i-- {
		if fa := time.Duration(faults[i].At * float64(time.Second)); fa <= at+time.Second {
			if d := at - fa; d < 0 {
				fmt.Fprintf(b, " (%.3fs before the fault %q at %s)", -d.Seconds(), faults[i].Kind, fmtDur(fa))
			} else {
				fmt.Fprintf(b, " (%.3fs after the fault %q at %s)", d.Seconds(), faults[i].Kind, fmtDur(fa))
			}
			break
		}
	}
	gctx, gcancel := context.WithTimeout(ctx, time.Second)
	_, err := t.r.Get(gctx)
	gcancel()
	fmt.Fprintf(b, "; Get: %v", err)
	// A new handle for the same id reads what the client holds for it (a
	// result that came for an id it did not match is kept as unclaimed)
	// and, in per-task mode, attaches to the queue again.
	gctx, gcancel = context.WithTimeout(ctx, 2*time.Second)
	v, err := s.client.AsyncResult(t.r.ID()).Get(gctx)
	gcancel()
	switch {
	case err != nil:
		fmt.Fprintf(b, "; a new AsyncResult for the id: %v", err)
	case v == t.val:
		fmt.Fprintf(b, "; a new AsyncResult for the id gets the right value: the result reached the client but did not settle the task's promise")
	default:
		fmt.Fprintf(b, "; a new AsyncResult for the id gets %v, want %q", v, t.val)
	}
	if s.cfg.mode == amqp.PerTask {
		q := s.client.ReplyQueue(t.r.ID())
		if qi, err := s.client.QueueInfo(ctx, q); err != nil {
			fmt.Fprintf(b, "; reply queue: %v", err)
		} else {
			fmt.Fprintf(b, "; reply queue exists %v, %d ready, %d consumers", qi.Exists, qi.Messages, qi.Consumers)
		}
	}
	if v, ok := brokerView[s.client.ReplyQueue(t.r.ID())]; ok {
		fmt.Fprintf(b, "; rabbitmqctl list_queues: %s", v)
	}
	if qi, err := s.client.QueueInfo(ctx, s.taskQueue); err == nil {
		fmt.Fprintf(b, "; task queue %d ready, %d consumers", qi.Messages, qi.Consumers)
	}
	return b.String()
}

// lostByCause sorts the lost tasks by the fault that struck while they
// were in flight: the first fault within 3 s after the task was sent, and
// whether it hit the node of the task's reply queue (a classic queue's
// transient results go with its node), or none.
func (s *soak) lostByCause(lost []*task, faults []faultRecord, brokerView map[string]string) (map[string]int, map[*task]string) {
	if len(lost) == 0 {
		return nil, nil
	}
	m := map[string]int{}
	of := map[*task]string{}
	for _, t := range lost {
		at := t.sent.Sub(s.start).Seconds()
		cause := "no fault within 3 s after it was sent"
		// A lost task was pending from its send to the end of the run: in
		// per-task mode, a fault of its reply queue's node at any time
		// after the send is where a classic queue's transient result goes
		// (or a result published while the node is down is dropped),
		// however long the task waited in its task queue first.
		if s.cfg.mode == amqp.PerTask {
			if n := nodeIn(brokerView[s.client.ReplyQueue(t.r.ID())]); n > 0 {
				for _, f := range faults {
					if f.Node == n && f.At >= at-0.5 {
						if f.At-at >= 3 {
							cause = fmt.Sprintf("pending when its reply queue's node was faulted (%s), 3 s or more after it was sent", f.Kind)
							m[cause]++
							of[t] = cause
						}
						break
					}
				}
				if of[t] != "" {
					continue
				}
			}
		}
		for _, f := range faults {
			if f.At >= at-0.5 && f.At-at < 3 {
				cause = "sent up to 3 s before a " + f.Kind
				if s.cfg.mode == amqp.PerTask && f.Node > 0 {
					if n := nodeIn(brokerView[s.client.ReplyQueue(t.r.ID())]); n == f.Node {
						cause += " of its reply queue's node"
					} else if n > 0 {
						cause += fmt.Sprintf(" (node %d; its reply queue is on node %d)", f.Node, n)
					}
				}
				break
			}
		}
		if strings.HasPrefix(cause, "no fault") {
			// Sent while a faulted node was down (from the fault until it
			// had started again)?
			for _, f := range faults {
				back := f.At + s.cfg.down.Seconds() + f.Restart
				if f.Node > 0 && at >= f.At && at <= back {
					cause = fmt.Sprintf("sent while node %d was down after a %s", f.Node, f.Kind)
					if n := nodeIn(brokerView[s.client.ReplyQueue(t.r.ID())]); n > 0 && s.cfg.mode == amqp.PerTask {
						if n == f.Node {
							cause += ", its reply queue on that node"
						} else {
							cause += ", its reply queue on a node that was up"
						}
					}
					break
				}
			}
		}
		m[cause]++
		of[t] = cause
	}
	return m, of
}

// nodeIn finds the cluster node in a queueCounts description.
func nodeIn(desc string) int {
	for i := 1; i <= 3; i++ {
		if strings.Contains(desc, fmt.Sprintf("on stalkc%d@", i)) {
			return i
		}
	}
	return 0
}

// queueCounts returns, for the run's reply queues, what rabbitmqctl says
// of them: ready and unacknowledged messages and consumers. An
// unacknowledged message with a consumer is a result the broker delivered
// to the client, which has not acknowledged it.
func (s *soak) queueCounts(ctx context.Context) map[string]string {
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	out, err := s.env.ctl(qctx, "-s", "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers", "pid")
	if err != nil {
		return nil
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(strings.TrimSpace(line), "\t")
		if len(f) == 5 && strings.HasPrefix(f[0], s.replyPrefix) {
			v := fmt.Sprintf("%s ready, %s unacknowledged, %s consumers", f[1], f[2], f[3])
			// <stalkc3@localhost.1796188559.1639.0>: the queue's node.
			if node, _, ok := strings.Cut(strings.TrimPrefix(f[4], "<"), "."); ok && strings.Contains(node, "@") {
				v += ", on " + node
			}
			m[f[0]] = v
		}
	}
	return m
}

// printCounts prints one line per key of m, sorted by key.
func printCounts(label string, m map[string]int) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Printf("%s: %d %s\n", label, m[k], k)
	}
}

func (s *soak) printSummary(sum summary) {
	for _, f := range sum.Faults {
		if f.Err != "" {
			fmt.Printf("fault at %s (%s) failed: %s\n", fmtDur(time.Duration(f.At*float64(time.Second))), f.Kind, f.Err)
		}
	}
	fmt.Printf("recovery: %s\n", recoveryStats(sum.Faults))
	printCounts("lost by cause", sum.LostByCause)
	printCounts("lost by cause | the worker's result", sum.LostByOutcome)
	for _, l := range sum.LostTasks {
		fmt.Println("lost:", l)
	}
	for _, p := range sum.Problems {
		fmt.Println("problem:", p)
	}
	if len(sum.SendErrKinds) > 0 {
		fmt.Printf("send errors: %v\n", sum.SendErrKinds)
	}
	if sum.Interrupted != "" {
		fmt.Printf("interrupted: %s\n", sum.Interrupted)
	}
	extra := ""
	if s.cfg.mode == amqp.PerTask {
		extra = fmt.Sprintf(" forgotten %d (per-task queues deleted after Get), forget-errors %d,", sum.Forgotten, sum.ForgetErrors)
	}
	rq := strconv.Itoa(sum.ReplyQueues)
	if sum.ReplyQueues < 0 {
		rq = "?"
	}
	where := "one node"
	if sum.Cluster {
		where = "3-node cluster"
	}
	fmt.Printf("summary: %s, %s mode, %s: sent %d completed %d (%.1f/s) lost %d wrong %d settled-twice %d failed %d send-errors %d | duplicates %d orphans %d reconnects %d unreachable %d faults %d | latency p50 %.1f p99 %.1f max %.0f ms | rss %.1f MB heap %.1f MB goroutines %d reply-queues %s |%s worker-results %d worker-restarts %d | %s\n",
		sum.Result, sum.Mode, where, sum.Sent, sum.Completed, sum.Rate, sum.Lost, sum.Wrong, sum.Twice, sum.Failed, sum.SendErrors,
		sum.Duplicates, sum.Orphans, sum.Reconnects, sum.Unreachable, len(sum.Faults), sum.P50, sum.P99, sum.Max,
		sum.RSSMB, sum.HeapMB, sum.Goroutines, rq, extra, sum.Processed, sum.WorkerRestarts, fmtDur(time.Duration(sum.Duration*float64(time.Second))))
	if s.cfg.jsonOut {
		printJSON(sum)
	}
}

// recoveryStats summarises, per kind of fault, how long the results
// connection took to be ready again and the first result of a task sent
// after the fault took.
func recoveryStats(fs []faultRecord) string {
	if len(fs) == 0 {
		return "no faults"
	}
	type agg struct{ ready, pub, first, restart []float64 }
	by := map[string]*agg{}
	var kinds []string
	for _, f := range fs {
		a := by[f.Kind]
		if a == nil {
			a = &agg{}
			by[f.Kind] = a
			kinds = append(kinds, f.Kind)
		}
		if f.ResultsReady >= 0 {
			a.ready = append(a.ready, f.ResultsReady)
		}
		if f.PublishReady >= 0 {
			a.pub = append(a.pub, f.PublishReady)
		}
		if f.FirstResult >= 0 {
			a.first = append(a.first, f.FirstResult)
		}
		if f.Restart > 0 {
			a.restart = append(a.restart, f.Restart)
		}
	}
	var parts []string
	for _, k := range kinds {
		a := by[k]
		var p []string
		if len(a.ready) > 0 {
			p = append(p, "results connection ready again after "+medMax(a.ready))
		}
		if len(a.pub) > 0 {
			p = append(p, "publish connection ready again after "+medMax(a.pub))
		}
		if len(a.first) > 0 {
			p = append(p, "first result of a task sent after the fault after "+medMax(a.first))
		}
		if len(a.restart) > 0 {
			p = append(p, "starting the node again took "+medMax(a.restart))
		}
		parts = append(parts, fmt.Sprintf("%s ×%d: %s", k, countKind(fs, k), strings.Join(p, ", ")))
	}
	return strings.Join(parts, " | ")
}

func countKind(fs []faultRecord, k string) int {
	n := 0
	for _, f := range fs {
		if f.Kind == k {
			n++
		}
	}
	return n
}

func medMax(v []float64) string {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 1 {
		return fmt.Sprintf("%.3fs", s[0])
	}
	return fmt.Sprintf("%.3fs median, %.3fs max", s[len(s)/2], s[len(s)-1])
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

// rssMB is this process's resident set size, VmRSS in /proc/self/status.
func rssMB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				kb, _ := strconv.ParseFloat(fields[0], 64)
				return kb / 1024
			}
		}
	}
	return 0
}
