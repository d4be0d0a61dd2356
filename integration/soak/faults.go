package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/stalk-dev/stalk/amqp"
)

// faultRecord is one fault and how the client came through it. Times are
// seconds from the fault; -1 means not measured or not seen.
type faultRecord struct {
	At           float64 `json:"at_s"` // from the start of the run
	Kind         string  `json:"kind"`
	Node         int     `json:"node,omitempty"`         // the node faulted (cluster)
	ResultsFrom  int     `json:"results_from,omitempty"` // the results connection's node before the fault
	ResultsTo    int     `json:"results_to,omitempty"`   // and once it was ready again
	PublishTo    int     `json:"publish_to,omitempty"`
	ResultsReady float64 `json:"results_ready_s"` // results connection Ready again (-1: it did not drop)
	PublishReady float64 `json:"publish_ready_s"`
	NewLeader    int     `json:"new_leader,omitempty"` // quorum reply queue's leader after a stop_app
	LeaderAfter  float64 `json:"leader_after_s,omitempty"`
	FirstResult  float64 `json:"first_result_s"`      // first result of a task sent after the fault
	Restart      float64 `json:"restart_s,omitempty"` // how long starting the node again took
	Note         string  `json:"note,omitempty"`
	Err          string  `json:"error,omitempty"`
}

func (s *soak) newFault(kind string) faultRecord {
	return faultRecord{At: round1(s.elapsed().Seconds()), Kind: kind, ResultsReady: -1, PublishReady: -1, FirstResult: -1}
}

func (s *soak) addFault(f faultRecord) {
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
	b := &strings.Builder{}
	fmt.Fprintf(b, "fault at %s: %s", fmtDur(time.Duration(f.At*float64(time.Second))), f.Kind)
	if f.Node > 0 {
		fmt.Fprintf(b, " node %d", f.Node)
	}
	if f.ResultsFrom > 0 {
		fmt.Fprintf(b, " (results on node %d)", f.ResultsFrom)
	}
	if f.ResultsReady >= 0 {
		fmt.Fprintf(b, "; results ready again after %.3fs", f.ResultsReady)
		if f.ResultsTo > 0 {
			fmt.Fprintf(b, " on node %d", f.ResultsTo)
		}
	}
	if f.PublishReady >= 0 {
		fmt.Fprintf(b, "; publish ready again after %.3fs", f.PublishReady)
		if f.PublishTo > 0 {
			fmt.Fprintf(b, " on node %d", f.PublishTo)
		}
	}
	if f.NewLeader > 0 {
		fmt.Fprintf(b, "; reply queue led by node %d after %.2fs", f.NewLeader, f.LeaderAfter)
	}
	if f.FirstResult >= 0 {
		fmt.Fprintf(b, "; first result of a task sent after the fault %.3fs after it", f.FirstResult)
	} else if f.Err == "" {
		b.WriteString("; no result of a task sent after the fault within a minute")
	}
	if f.Restart > 0 {
		fmt.Fprintf(b, "; node started again in %.1fs", f.Restart)
	}
	if f.Note != "" {
		fmt.Fprintf(b, "; %s", f.Note)
	}
	if f.Err != "" {
		fmt.Fprintf(b, "; ERROR %s", f.Err)
	}
	s.logf("%s", b.String())
}

func secs(d time.Duration) float64 {
	if d < 0 {
		return -1
	}
	return float64(d.Milliseconds()) / 1000
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	tm := time.NewTimer(time.Until(t))
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// nearEnd says whether the sending ends within two seconds: too late for
// another fault.
func (s *soak) nearEnd() bool {
	return time.Until(s.start.Add(s.cfg.duration)) < 2*time.Second
}

// measureReady waits for the results (or publishing) connection to come
// back after t0 and records when and on which node.
func (s *soak) measureReady(ctx context.Context, f *faultRecord, publishing bool, t0 time.Time) {
	at, err := s.states.waitReady(ctx, publishing, t0, 2*time.Minute)
	which := "results"
	if publishing {
		which = "publish"
	}
	if err != nil {
		f.Note = strings.TrimPrefix(f.Note+"; "+which+": "+err.Error(), "; ")
		return
	}
	res, pub := s.client.Status()
	if publishing {
		f.PublishReady, f.PublishTo = secs(at.Sub(t0)), nodeOf(pub.Broker)
	} else {
		f.ResultsReady, f.ResultsTo = secs(at.Sub(t0)), nodeOf(res.Broker)
	}
}

// localFaults closes the client's results and publishing connections,
// alternately, every cfg.killEvery until sched ends. A fault in progress
// is measured to its end unless ctx ends.
func (s *soak) localFaults(sched, ctx context.Context) {
	for k := 0; ; k++ {
		if !sleepUntil(sched, s.start.Add(time.Duration(k+1)*s.cfg.killEvery)) || s.nearEnd() {
			return
		}
		which, pub := "results", false
		if k%2 == 1 {
			which, pub = "publish", true
		}
		s.addFault(s.closeConnFault(ctx, "close "+which, which, pub))
	}
}

// closeConnFault closes the client's results or publishing connection
// broker-side. The fault's time is when the client saw the connection drop
// (rabbitmqctl takes a second or so to start).
func (s *soak) closeConnFault(ctx context.Context, kind, which string, pub bool) faultRecord {
	f := s.newFault(kind)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pid, err := findConn(cctx, s.env.ctl, s.connName+"-"+which)
	if err != nil {
		f.Err = err.Error()
		return f
	}
	w := s.newWatch()
	begin := time.Now()
	if _, err := s.env.ctl(cctx, "close_connection", pid, "stalk soak fault"); err != nil {
		f.Err = err.Error()
		return f
	}
	t0, err := s.states.waitLeft(ctx, pub, begin, 30*time.Second)
	if err != nil {
		f.Err = which + ": " + err.Error()
		return f
	}
	f.At = round1(t0.Sub(s.start).Seconds())
	s.measureReady(ctx, &f, pub, t0)
	f.FirstResult = secs(s.firstResult(ctx, w, t0, time.Minute))
	return f
}

// clusterFaults alternates kill -9 of the results connection's node and
// stop_app of the reply queue's node until sched ends. A fault in progress
// finishes (its node is started again) unless ctx ends.
func (s *soak) clusterFaults(sched, ctx context.Context) {
	next := s.start.Add(s.cfg.killEvery)
	for k := 0; ; k++ {
		if !sleepUntil(sched, next) || s.nearEnd() {
			return
		}
		fctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		var f faultRecord
		if k%2 == 0 {
			f = s.killResultsNode(fctx)
		} else {
			f = s.stopReplyQueueNode(fctx)
		}
		cancel()
		s.addFault(f)
		next = s.start.Add(time.Duration(k+2) * s.cfg.killEvery)
		if soon := time.Now().Add(5 * time.Second); next.Before(soon) {
			next = soon
		}
	}
}

// killResultsNode kills -9 the node the results connection is on, waits
// for the client to be ready on another node, keeps the node down for
// cfg.down and starts it again.
func (s *soak) killResultsNode(ctx context.Context) faultRecord {
	cl := s.env.cluster.c
	res, pub := s.client.Status()
	r, p := nodeOf(res.Broker), nodeOf(pub.Broker)
	if r == 0 {
		f := s.newFault("kill -9")
		f.Err = fmt.Sprintf("results connection on %q, not a cluster node", res.Broker)
		return f
	}
	note := ""
	if r == protectedNode {
		n, err := s.moveOffProtected(ctx)
		if err != nil {
			f := s.newFault("kill -9")
			f.Err = err.Error()
			return f
		}
		_, pub = s.client.Status()
		r, p = n, nodeOf(pub.Broker)
		note = fmt.Sprintf("the results connection was on node 1, which stays up: it was closed first, and the client went to node %d", n)
	}
	f := s.newFault("kill -9")
	f.Note = note
	f.Node, f.ResultsFrom = r, r
	t0 := time.Now()
	w := s.newWatch()
	if err := cl.Kill(r); err != nil {
		f.Err = err.Error()
		return f
	}
	restarted := s.restartAt(ctx, r, t0)
	s.measureReady(ctx, &f, false, t0)
	if p == r {
		s.measureReady(ctx, &f, true, t0)
	}
	f.FirstResult = secs(s.firstResult(ctx, w, t0, time.Minute))
	restarted(&f)
	return f
}

// restartAt starts node n again cfg.down after t0, in the background,
// while the client's recovery is being measured; wait records the outcome
// in f.
func (s *soak) restartAt(ctx context.Context, n int, t0 time.Time) (wait func(f *faultRecord)) {
	var took time.Duration
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sleepUntil(ctx, t0.Add(s.cfg.down))
		begin := time.Now()
		if err = s.env.cluster.c.Start(ctx, n); err != nil {
			err = fmt.Errorf("start node %d: %w", n, err)
			return
		}
		took = time.Since(begin)
		// A node that dies again right after it started would make every
		// later number meaningless: say so.
		sleepUntil(ctx, time.Now().Add(3*time.Second))
		if !s.env.cluster.c.Running(ctx, n) {
			err = fmt.Errorf("node %d is not running 3 s after it started", n)
		}
	}()
	return func(f *faultRecord) {
		<-done
		if took > 0 {
			f.Restart = round1(took.Seconds())
		}
		if err != nil {
			f.Err = strings.TrimPrefix(f.Err+"; "+err.Error(), "; ")
		}
	}
}

// stopReplyQueueNode stops the RabbitMQ application (stop_app) on the node
// of the reply queue: the quorum shared queue's leader, or in per-task
// mode the home node of the newest per-task queue. It keeps it stopped for
// cfg.down and starts it again.
func (s *soak) stopReplyQueueNode(ctx context.Context) faultRecord {
	cl := s.env.cluster.c
	note := ""
	var l int
	var err error
	if s.cfg.mode == amqp.Shared {
		q := s.client.ReplyQueue("")
		l, err = cl.QueueLeader(ctx, q)
		if err == nil && l == protectedNode {
			to := 2
			if res, _ := s.client.Status(); nodeOf(res.Broker) == 3 {
				to = 3
			}
			if terr := s.transferLeadership(ctx, q, to); terr != nil {
				f := s.closeConnFault(ctx, "close results on node 1", "results", false)
				f.Note = strings.TrimPrefix(f.Note+"; instead of stop_app: the reply queue is led by node 1, which stays up, and moving its leadership failed: "+terr.Error(), "; ")
				return f
			}
			note = fmt.Sprintf("leadership moved from node 1 to node %d first", to)
			l = to
		}
	} else {
		l, note = s.perTaskQueueNode(ctx)
		if l == protectedNode {
			n, err := s.moveOffProtected(ctx)
			if err != nil {
				f := s.newFault("stop_app")
				f.Err = err.Error()
				return f
			}
			l = n
			note = fmt.Sprintf("the per-task queues were on node 1, which stays up: the results connection was closed first, and the client went to node %d, where it declares them", n)
		}
	}
	f := s.newFault("stop_app")
	f.Note = note
	if err != nil || l == 0 {
		f.Err = fmt.Sprintf("reply queue's node: %v", err)
		return f
	}
	res, pub := s.client.Status()
	r, p := nodeOf(res.Broker), nodeOf(pub.Broker)
	f.Node, f.ResultsFrom = l, r
	w := s.newWatch()
	begin := time.Now()
	if err := cl.Stop(ctx, l); err != nil {
		f.Err = err.Error()
		s.restartAt(ctx, l, begin)(&f)
		return f
	}
	restarted := s.restartAt(ctx, l, begin)
	// The fault's time: when a connection on the node dropped, or else
	// when stop_app returned.
	t0 := time.Now()
	for _, c := range []struct {
		on  bool
		pub bool
	}{{r == l, false}, {p == l, true}} {
		if c.on {
			if at, err := s.states.waitLeft(ctx, c.pub, begin, 30*time.Second); err == nil && at.Before(t0) {
				t0 = at
			}
		}
	}
	f.At = round1(t0.Sub(s.start).Seconds())
	if r == l {
		s.measureReady(ctx, &f, false, t0)
	}
	if p == l {
		s.measureReady(ctx, &f, true, t0)
	}
	if s.cfg.mode == amqp.Shared {
		for time.Since(t0) < time.Minute && ctx.Err() == nil {
			if n, err := cl.QueueLeader(ctx, s.client.ReplyQueue("")); err == nil && n != l {
				f.NewLeader, f.LeaderAfter = n, secs(time.Since(t0))
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	f.FirstResult = secs(s.firstResult(ctx, w, t0, time.Minute))
	restarted(&f)
	return f
}

// moveOffProtected closes the client's results connection on node 1 and
// waits until it is ready on another node, and for two seconds more, so
// that new per-task queues are declared there. It returns that node.
func (s *soak) moveOffProtected(ctx context.Context) (int, error) {
	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		pid, err := findConn(cctx, s.env.ctl, s.connName+"-results")
		if err == nil {
			begin := time.Now()
			if _, err = s.env.ctl(cctx, "close_connection", pid, "stalk soak: off node 1"); err == nil {
				_, err = s.states.waitReady(cctx, false, begin, 30*time.Second)
			}
		}
		cancel()
		if err != nil {
			return 0, fmt.Errorf("moving the results connection off node 1: %w", err)
		}
		res, _ := s.client.Status()
		if n := nodeOf(res.Broker); n != protectedNode && n != 0 {
			sleepUntil(ctx, time.Now().Add(2*time.Second))
			return n, nil
		}
	}
	return 0, errors.New("moving the results connection off node 1: it came back to node 1 three times")
}

// perTaskQueueNode finds the home node of the newest per-task reply queue
// of a task sent within the last two seconds (an older pending one may be
// stuck on a node that was down); without one, the node of the results
// connection, which declares them.
func (s *soak) perTaskQueueNode(ctx context.Context) (int, string) {
	s.mu.Lock()
	var newest *task
	for _, t := range s.outstanding {
		if time.Since(t.sent) < 2*time.Second && (newest == nil || t.seq > newest.seq) {
			newest = t
		}
	}
	s.mu.Unlock()
	if newest != nil {
		if n, err := s.env.cluster.c.QueueNode(ctx, s.client.ReplyQueue(newest.r.ID())); err == nil {
			return n, "node of the newest per-task queue"
		}
	}
	res, _ := s.client.Status()
	return nodeOf(res.Broker), "node of the results connection, which declares the per-task queues"
}

// transferLeadership moves quorum queue q's leadership to node to, with
// rabbit_quorum_queue:transfer_leadership, and waits until list_queues
// shows it.
func (s *soak) transferLeadership(ctx context.Context, q string, to int) error {
	cl := s.env.cluster.c
	expr := fmt.Sprintf(`{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"%s">>)), rabbit_quorum_queue:transfer_leadership(Q, '%s').`, q, cl.Node(to))
	out, err := s.env.ctl(ctx, "eval", expr)
	if err != nil {
		return err
	}
	if strings.Contains(out, "not_migrated") {
		return fmt.Errorf("transfer_leadership: %s", strings.TrimSpace(out))
	}
	end := time.Now().Add(15 * time.Second)
	for time.Now().Before(end) {
		if n, err := cl.QueueLeader(ctx, q); err == nil && n == to {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("transfer_leadership said %s, but node %d does not lead %s", strings.TrimSpace(out), to, q)
}
