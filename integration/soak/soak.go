package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/echoworker"
	"github.com/stalk-dev/stalk/result"
)

// task is one task sent: what its result must be, and how often it
// settled.
type task struct {
	seq     int64
	val     string // the unique argument, which the echo worker returns
	sent    time.Time
	r       *result.AsyncResult
	settled atomic.Int32
	// done is closed once the task is over for its sender: settled and, in
	// per-task mode, its reply queue forgotten.
	done     chan struct{}
	doneOnce sync.Once
}

func (t *task) finish() { t.doneOnce.Do(func() { close(t.done) }) }

type soak struct {
	cfg         *config
	env         *environment
	client      *amqp.Client
	taskQueue   string
	replyPrefix string
	connName    string
	start       time.Time
	states      *stateLog

	workerMu       sync.Mutex
	worker         *echoworker.Worker
	workerRestarts atomic.Int64
	processedGone  atomic.Int64 // results published by workers since replaced

	outcomeMu sync.Mutex
	outcomes  map[string][]outcomeRecord // with -confirm-results: what the broker said of each result per task id

	seq         atomic.Int64
	mu          sync.Mutex
	outstanding map[int64]*task
	lat         []time.Duration // latencies of the tasks completed in this report interval
	allLat      latencyHist
	final       bool     // the run is over: later settlements are not counted
	samples     []string // the first wrong, failed and settled-twice tasks
	failedTasks []*task  // the first failed tasks, looked at again at the end
	sendErrs    map[string]int64
	faults      []faultRecord

	sending, sent, completed, wrong, errored, twice, sendErrors atomic.Int64

	forgetQ                          chan *task
	forgotten, forgetSkip, forgetErr atomic.Int64
	forgetWG                         sync.WaitGroup

	watch    atomic.Pointer[watch]
	lastSent atomic.Int64  // when the last task was sent, Unix ns
	sendDone chan struct{} // closed when the senders have stopped
}

func newSoak(ctx context.Context, cfg *config, env *environment) (*soak, error) {
	s := &soak{
		cfg: cfg, env: env,
		taskQueue:   env.prefix + "-tasks",
		replyPrefix: env.prefix + "-reply-",
		connName:    env.prefix,
		outstanding: map[int64]*task{},
		sendErrs:    map[string]int64{},
		states:      newStateLog(),
		sendDone:    make(chan struct{}),
	}
	w, err := s.startWorker(ctx)
	if err != nil {
		return nil, err
	}
	s.worker = w
	if env.cluster != nil {
		// The worker is on the protected node and declared the classic task
		// queue through it, so that is the queue's home.
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := env.cluster.c.QueueNode(qctx, s.taskQueue)
		cancel()
		if err != nil {
			s.stopWorker()
			return nil, fmt.Errorf("task queue: %w", err)
		}
		if n != protectedNode {
			s.stopWorker()
			return nil, fmt.Errorf("task queue %s is on node %d, not on node %d", s.taskQueue, n, protectedNode)
		}
	}

	level, err := zerolog.ParseLevel(cfg.logLevel)
	if err != nil {
		s.stopWorker()
		return nil, err
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	logger := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000", NoColor: true}).Level(level).With().Timestamp().Logger()
	opts := []amqp.Option{
		amqp.WithLogger(logger),
		amqp.WithConnectionName(s.connName),
		amqp.WithReplyQueuePrefix(s.replyPrefix),
		amqp.WithDefaultQueue(s.taskQueue),
		amqp.WithReplyMode(cfg.mode),
	}
	if cfg.mode == amqp.PerTask {
		// A per-task queue nobody deletes goes after a minute; the soak
		// deletes each one once its result is read (ForgetAfterGet).
		opts = append(opts, amqp.WithResultExpires(cfg.expires))
	} else {
		opts = append(opts, amqp.WithResultExpires(10*time.Minute))
	}
	if env.cluster != nil {
		opts = append(opts, amqp.WithFailover(amqp.RoundRobin))
		if cfg.mode == amqp.Shared {
			opts = append(opts, amqp.WithReplyQueueType(amqp.Quorum))
		}
	}
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	c, err := amqp.Dial(dctx, env.clientURL, opts...)
	cancel()
	if err != nil {
		s.stopWorker()
		return nil, err
	}
	s.client = c
	c.OnStateChange(func(publishing bool, st amqp.ConnState) { s.states.add(publishing, st) })
	s.forgetQ = make(chan *task, 10000)
	return s, nil
}

func (s *soak) startWorker(ctx context.Context) (*echoworker.Worker, error) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cfg := echoworker.Config{
		URL: s.env.workerURL, Queue: s.taskQueue, Channels: 2, Prefetch: 128,
		Name: s.env.prefix + " echoworker",
	}
	if s.cfg.confirm {
		cfg.ConfirmResults = true
		cfg.OnResult = s.recordOutcome
	}
	return echoworker.Start(wctx, cfg)
}

// outcomeRecord is what the broker said of one result the worker
// published, and when (since the start of the run) the worker had it.
type outcomeRecord struct {
	at   time.Duration
	text string
}

// recordOutcome keeps what the broker said of the worker's result for a
// task; a second result for the same id (a resend) is added after it.
func (s *soak) recordOutcome(id, outcome string) {
	at := s.elapsed()
	s.outcomeMu.Lock()
	defer s.outcomeMu.Unlock()
	if s.outcomes == nil {
		s.outcomes = map[string][]outcomeRecord{}
	}
	s.outcomes[id] = append(s.outcomes[id], outcomeRecord{at: at, text: outcome})
}

// outcomeList formats the records of id, each through f, joined by "; ",
// or says that the worker published no result for it.
func (s *soak) outcomeList(id string, f func(outcomeRecord) string) string {
	s.outcomeMu.Lock()
	defer s.outcomeMu.Unlock()
	recs := s.outcomes[id]
	if len(recs) == 0 {
		return "no result published"
	}
	parts := make([]string, len(recs))
	for i, r := range recs {
		parts[i] = f(r)
	}
	return strings.Join(parts, "; ")
}

// outcome says, with -confirm-results, what the broker answered to each
// result the worker published for id, and when.
func (s *soak) outcome(id string) string {
	return s.outcomeList(id, func(r outcomeRecord) string {
		return fmt.Sprintf("at %.3fs %s", r.at.Seconds(), r.text)
	})
}

// outcomeKinds is outcome without the times and error details ("acked",
// "returned 312 NO_ROUTE, acked", "no confirm"), so that lost tasks can be
// counted by it.
func (s *soak) outcomeKinds(id string) string {
	return s.outcomeList(id, func(r outcomeRecord) string {
		kind, _, _ := strings.Cut(r.text, ":")
		return kind
	})
}

func (s *soak) stopWorker() {
	s.workerMu.Lock()
	defer s.workerMu.Unlock()
	if s.worker != nil {
		s.worker.Stop()
	}
}

// superviseWorker restarts the echo worker if its connection drops (it does
// not reconnect by itself). Its unacknowledged tasks go back to the queue.
func (s *soak) superviseWorker(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.workerMu.Lock()
		w := s.worker
		s.workerMu.Unlock()
		err := w.Err()
		if err == nil {
			continue
		}
		s.logf("echo worker stopped: %v; starting another", err)
		w.Stop()
		s.processedGone.Add(w.Processed())
		nw, err := s.startWorker(ctx)
		if err != nil {
			s.logf("echo worker: %v", err)
			continue
		}
		s.workerRestarts.Add(1)
		s.workerMu.Lock()
		s.worker = nw
		s.workerMu.Unlock()
	}
}

// processed is how many results the echo workers have published.
func (s *soak) processed() int64 {
	s.workerMu.Lock()
	defer s.workerMu.Unlock()
	return s.processedGone.Load() + s.worker.Processed()
}

func (s *soak) elapsed() time.Duration { return time.Since(s.start) }

func (s *soak) logf(format string, a ...any) {
	fmt.Printf("[%s] %s\n", fmtDur(s.elapsed()), fmt.Sprintf(format, a...))
}

func logf(format string, a ...any) { fmt.Fprintf(os.Stderr, "soak: "+format+"\n", a...) }

// run sends for cfg.duration while faults run, then waits up to
// cfg.deadline for the last results, and returns the summary.
func (s *soak) run(ctx context.Context) summary {
	s.start = time.Now()
	s.printHeader()
	sendCtx, stopSending := context.WithTimeout(ctx, s.cfg.duration)
	defer stopSending()

	var bg sync.WaitGroup
	bgCtx, stopBG := context.WithCancel(ctx)
	defer stopBG()
	bg.Add(1)
	go func() { defer bg.Done(); s.superviseWorker(bgCtx) }()
	bg.Add(1)
	go func() { defer bg.Done(); s.stallProbe(bgCtx) }()
	if s.cfg.mode == amqp.PerTask {
		for range 8 {
			s.forgetWG.Add(1)
			go s.forgetter(ctx)
		}
	}
	reportDone := make(chan struct{})
	go func() { defer close(reportDone); s.reporter(sendCtx) }()

	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		if s.cfg.killEvery <= 0 {
			return
		}
		if s.env.cluster != nil {
			s.clusterFaults(sendCtx, ctx)
		} else {
			s.localFaults(sendCtx, ctx)
		}
	}()

	// A Send in flight when the run is interrupted gets 5 more seconds, so
	// that its task is not abandoned between publish and confirm.
	sendBase, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	stopAfter := context.AfterFunc(ctx, func() { time.AfterFunc(5*time.Second, cancelSends) })
	defer stopAfter()
	var senders, inflight sync.WaitGroup
	for k := range s.cfg.senders {
		senders.Add(1)
		go func() { defer senders.Done(); s.sender(sendCtx, sendBase, k, &inflight) }()
	}
	senders.Wait()
	inflight.Wait()
	close(s.sendDone)
	<-reportDone
	sendEnd := time.Now()
	s.logf("sending stopped: %d sent; waiting up to %s for the last results", s.sent.Load(), s.cfg.deadline)

	// Wait for the last results, and for a fault in progress to finish (a
	// node it took down is started again).
	deadline := time.NewTimer(s.cfg.deadline)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	faultsOver := false
wait:
	for {
		select {
		case <-faultsDone:
			faultsOver = true
			faultsDone = nil
		case <-tick.C:
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			// Interrupted: give the results in flight a few seconds.
			if !faultsOver {
				select {
				case <-faultsDone:
				case <-time.After(10 * time.Second):
				}
			}
			s.waitOutstanding(5 * time.Second)
			break wait
		}
		if faultsOver && s.outstandingCount() == 0 {
			break
		}
	}
	drained := time.Since(sendEnd)
	sum := s.summarize(ctx, drained)
	stopBG()
	bg.Wait()
	return sum
}

func (s *soak) waitOutstanding(d time.Duration) {
	end := time.Now().Add(d)
	for s.outstandingCount() > 0 && time.Now().Before(end) {
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *soak) outstandingCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.outstanding)
}

// sender sends its share of cfg.rate until runCtx ends: one task per tick,
// each on its own goroutine. A task holds one of the sender's maxInFlight
// slots from Send until it is over (settled and, in per-task mode, its
// reply queue deleted), or for at most slotHold: the rate does not depend
// on how long one task takes, but a broker that cannot keep up slows the
// senders down instead of piling up queues. A Send is bounded by
// cfg.sendTimeout and by ctx, not by the end of the run, so that the last
// sends are not cut short.
func (s *soak) sender(runCtx, ctx context.Context, k int, inflight *sync.WaitGroup) {
	interval := time.Duration(float64(time.Second) * float64(s.cfg.senders) / s.cfg.rate)
	next := time.Now().Add(interval * time.Duration(k) / time.Duration(s.cfg.senders))
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	slots := make(chan struct{}, maxInFlight)
	for {
		select {
		case <-runCtx.Done():
			return
		case <-t.C:
		}
		select {
		case <-runCtx.Done():
			return
		case slots <- struct{}{}:
		}
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-slots }()
			if tk := s.sendOne(ctx); tk != nil {
				hold := time.NewTimer(slotHold)
				defer hold.Stop()
				select {
				case <-tk.done:
				case <-hold.C:
				case <-ctx.Done():
				}
			}
		}()
		next = next.Add(interval)
		// No bursts after a stall: a steady rate from now on.
		if now := time.Now(); next.Before(now) {
			next = now
		}
		t.Reset(time.Until(next))
	}
}

const (
	maxInFlight = 8                // tasks one sender has under way
	slotHold    = 10 * time.Second // how long a task that does not finish holds its slot
)

// sendOne sends one task and returns it, or nil if Send failed.
func (s *soak) sendOne(ctx context.Context) *task {
	seq := s.seq.Add(1)
	t := &task{seq: seq, val: fmt.Sprintf("%s-%d", s.env.prefix, seq), sent: time.Now(), done: make(chan struct{})}
	sctx, cancel := context.WithTimeout(ctx, s.cfg.sendTimeout)
	s.sending.Add(1)
	r, err := s.client.Send(sctx, "tasks.echo", amqp.Args(t.val), amqp.Queue(s.taskQueue))
	s.sending.Add(-1)
	cancel()
	if err != nil {
		s.sendErrors.Add(1)
		key := sendErrKind(err)
		s.mu.Lock()
		s.sendErrs[key]++
		first := s.sendErrs[key] == 1
		s.mu.Unlock()
		if first {
			s.logf("send error (%s): %v", key, err)
		}
		return nil
	}
	t.r = r
	s.sent.Add(1)
	s.lastSent.Store(t.sent.UnixNano())
	s.mu.Lock()
	s.outstanding[seq] = t
	s.mu.Unlock()
	r.Then(func(v any) { s.settle(t, v, nil) }, func(err error) { s.settle(t, nil, err) })
	return t
}

func sendErrKind(err error) string {
	switch {
	case errors.Is(err, amqp.ErrNotConfirmed):
		return "not confirmed"
	case errors.Is(err, amqp.ErrReplyQueueUnavailable):
		return "reply queue unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.Is(err, amqp.ErrClosed):
		return "closed"
	}
	return "other"
}

// settle runs once per Then callback: a task whose callbacks run twice
// settled twice.
func (s *soak) settle(t *task, v any, err error) {
	now := time.Now()
	n := t.settled.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > 1 {
		s.twice.Add(1)
		s.sample(fmt.Sprintf("settled %d times: task %d (%s), this time with %v / %v", n, t.seq, t.r.ID(), v, err))
		return
	}
	if s.final {
		return // rejected by Close after the deadline: counted as lost
	}
	delete(s.outstanding, t.seq)
	if err != nil || s.cfg.mode != amqp.PerTask {
		defer t.finish()
	}
	if err != nil {
		s.errored.Add(1)
		s.sample(fmt.Sprintf("failed: task %d (%s) sent at %s: %v", t.seq, t.r.ID(), fmtDur(t.sent.Sub(s.start)), err))
		if len(s.failedTasks) < 10 {
			s.failedTasks = append(s.failedTasks, t)
		}
		return
	}
	if str, ok := v.(string); !ok || str != t.val {
		s.wrong.Add(1)
		s.sample(fmt.Sprintf("wrong: task %d (%s): got %v (%T), want %q", t.seq, t.r.ID(), v, v, t.val))
		t.finish()
		return
	}
	s.completed.Add(1)
	d := now.Sub(t.sent)
	s.lat = append(s.lat, d)
	s.allLat.add(d)
	if w := s.watch.Load(); w != nil && !t.sent.Before(w.since) {
		w.add(t.sent, now)
	}
	if s.cfg.mode == amqp.PerTask {
		select {
		case s.forgetQ <- t:
		default:
			s.forgetSkip.Add(1) // its queue expires by itself
			t.finish()
		}
	}
}

// sample keeps the first few problem reports, and logs them. s.mu is held.
func (s *soak) sample(msg string) {
	if len(s.samples) < 20 {
		s.samples = append(s.samples, msg)
		s.logf("%s", msg)
	}
}

// forgetter deletes per-task reply queues whose result has been read:
// Get on a ready result returns at once, and ForgetAfterGet then deletes
// its queue.
func (s *soak) forgetter(ctx context.Context) {
	defer s.forgetWG.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case t, ok := <-s.forgetQ:
			if !ok {
				return
			}
			gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := t.r.Get(gctx, result.ForgetAfterGet())
			cancel()
			t.finish()
			if err != nil {
				s.forgetErr.Add(1)
			} else {
				s.forgotten.Add(1)
			}
		}
	}
}

// close closes the client, stops the worker and deletes what the run
// created on the broker.
func (s *soak) close() {
	if s.forgetQ != nil {
		close(s.forgetQ)
		s.forgetWG.Wait()
	}
	_ = s.client.Close()
	s.stopWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	names := []string{s.taskQueue}
	if qs, err := queuesWithPrefix(ctx, s.env.ctl, s.replyPrefix); err == nil {
		names = append(names, qs...)
	}
	if err := deleteQueues(s.env.workerURL, names); err != nil {
		logf("clean-up: %v", err)
	}
}

func fmtDur(d time.Duration) string {
	d = d.Round(time.Second)
	return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (s *soak) printHeader() {
	where := "one node, " + redactURL(s.env.clientURL)
	faults := fmt.Sprintf("every %s: close the client's results and publishing connections, alternately (rabbitmqctl close_connection)", s.cfg.killEvery)
	if s.env.cluster != nil {
		where = "3-node cluster (client: nodes 2;3;1, round-robin; echo worker and classic task queue on node 1, which stays up)"
		faults = fmt.Sprintf("every %s, alternately: kill -9 of the results connection's node, then restart after %s; stop_app of the reply queue's node (leader), then start_app after %s", s.cfg.killEvery, s.cfg.down, s.cfg.down)
	}
	if s.cfg.killEvery <= 0 {
		faults = "none"
	}
	replies := "shared reply queue " + s.client.ReplyQueue("")
	if s.env.cluster != nil && s.cfg.mode == amqp.Shared {
		replies += " (quorum)"
	}
	if s.cfg.mode == amqp.PerTask {
		replies = fmt.Sprintf("classic per-task reply queues %s<id>, x-expires %s (WithResultExpires), each deleted once its result is read (result.ForgetAfterGet)", s.replyPrefix, s.cfg.expires)
	}
	fmt.Printf("soak: mode %s, %s, %.0f tasks/s from %d senders for %s, task queue %s\n", s.cfg.modeName, where, s.cfg.rate, s.cfg.senders, s.cfg.duration, s.taskQueue)
	fmt.Printf("soak: replies: %s\n", replies)
	fmt.Printf("soak: faults: %s\n", faults)
	fmt.Printf("soak: a task is lost when its result has not come %s after the run; \"lost\" in a report line counts the tasks waiting for longer than that\n", s.cfg.deadline)
}

func redactURL(u string) string {
	parts := strings.Split(u, ";")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			if colon := strings.Index(p, "://"); colon >= 0 {
				user := p[colon+3 : at]
				if c := strings.IndexByte(user, ':'); c >= 0 {
					parts[i] = p[:colon+3] + user[:c] + ":xxxxx" + p[at:]
				}
			}
		}
	}
	return strings.Join(parts, ";")
}
