package result

import (
	"sync"
	"time"

	"github.com/stalk-dev/stalk/promise"
)

// maxHistory bounds the states an Entry remembers for OnMessage replay.
const maxHistory = 64

// Outcome says what Entry.Deliver did with a message.
type Outcome int

const (
	// Applied: the message moved the task forward (an unready state).
	Applied Outcome = iota
	// Settled: the message was the task's first ready state.
	Settled
	// Duplicate: a ready state arrived after the task was already ready.
	Duplicate
	// Stale: an unready state arrived after the task was ready; ignored so
	// that states never go backwards.
	Stale
)

func (o Outcome) String() string {
	return [...]string{"applied", "settled", "duplicate", "stale"}[o]
}

// SendInfo is what the sender knows about a task it published. Celery's rpc
// result messages carry none of it, so this is where Name, Args, Kwargs and
// Queue come from.
type SendInfo struct {
	Name         string
	Args         []any
	Kwargs       map[string]any
	Queue        string
	IgnoreResult bool
	Sent         time.Time
}

// Entry records one task's states. A backend creates one per task id it
// follows and calls Deliver for every decoded message; AsyncResult reads
// it. Deliver never runs user code. An Entry is safe for concurrent use.
type Entry struct {
	id string
	p  *promise.Promise[*Meta]

	mu        sync.Mutex
	latest    *Meta
	history   []*Meta
	subs      map[*Subscription]struct{}
	retries   int // the highest retry count a message or an event stated
	retryMsgs int // RETRY messages seen
	worker    string
	dateDone  time.Time
	info      SendInfo
	hasInfo   bool
	// disrupted is set when the connection was lost while the task was
	// pending, so a transient result may have been lost.
	disrupted bool
	// unreachable says why the result cannot arrive now ("reply queue X:
	// its home node Y is down"), while that lasts.
	unreachable string
}

// MarkDisrupted records that the connection carrying this task's results
// was lost while it was pending. A Get that then times out says the result
// may have been lost (errors.Is(err, ErrResultLost)).
func (e *Entry) MarkDisrupted() {
	e.mu.Lock()
	e.disrupted = true
	e.mu.Unlock()
}

// MarkUnreachable records why the task's result cannot reach this process
// right now (its reply queue's node is down), or, with "", that it can
// again. A Get that ends meanwhile says why, and its error satisfies
// errors.Is(err, ErrResultLost).
func (e *Entry) MarkUnreachable(reason string) {
	e.mu.Lock()
	e.unreachable = reason
	if reason != "" {
		e.disrupted = true
	}
	e.mu.Unlock()
}

// Unreachable returns the reason given to MarkUnreachable, or "".
func (e *Entry) Unreachable() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.unreachable
}

// Disrupted reports whether MarkDisrupted was called.
func (e *Entry) Disrupted() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.disrupted
}

// NewEntry returns an Entry for id in the PENDING state.
func NewEntry(id string) *Entry {
	return &Entry{id: id, p: promise.New[*Meta]()}
}

// ID returns the task id.
func (e *Entry) ID() string { return e.id }

// Promise settles with the first ready Meta, or is rejected with a
// transport error (ErrClosed, a deleted queue, a lost result).
func (e *Entry) Promise() *promise.Promise[*Meta] { return e.p }

// Deliver records m. States never go backwards: once a ready state has been
// recorded, later messages are reported as Duplicate or Stale and change
// nothing.
func (e *Entry) Deliver(m *Meta) Outcome { return e.DeliverWith(m, nil) }

// DeliverWith is Deliver, and calls beforeSettle, when m is the first ready
// state, after recording it and before the promise settles: a backend moves
// its bookkeeping there so that a waiter who wakes up sees it done.
func (e *Entry) DeliverWith(m *Meta, beforeSettle func()) Outcome {
	e.mu.Lock()
	if e.latest != nil && e.latest.Status.Ready() {
		e.mu.Unlock()
		if m.Status.Ready() {
			return Duplicate
		}
		return Stale
	}
	e.latest = m
	if len(e.history) >= maxHistory {
		copy(e.history, e.history[1:])
		e.history = e.history[:maxHistory-1]
	}
	e.history = append(e.history, m)
	if m.Status == Retry {
		e.retryMsgs++
	}
	if m.Retries != nil && *m.Retries > e.retries {
		e.retries = *m.Retries
	}
	if h := m.startedHostname(); h != "" {
		e.worker = h
	}
	if m.Worker != "" {
		e.worker = m.Worker
	}
	ready := m.Status.Ready()
	if ready {
		if !m.DateDone.IsZero() {
			e.dateDone = m.DateDone
		} else if e.dateDone.IsZero() {
			e.dateDone = m.Received
		}
	}
	subs := make([]*Subscription, 0, len(e.subs))
	for s := range e.subs {
		subs = append(subs, s)
	}
	e.mu.Unlock()
	for _, s := range subs {
		s.push(m)
	}
	if ready {
		if beforeSettle != nil {
			beforeSettle()
		}
		e.p.Resolve(m)
		return Settled
	}
	return Applied
}

// Fail rejects the entry's promise with err, unless it has settled. It
// reports whether it did.
func (e *Entry) Fail(err error) bool { return e.p.Reject(err) }

// Latest returns the latest recorded message, or nil while PENDING.
func (e *Entry) Latest() *Meta {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.latest
}

// History returns the recorded messages, oldest first (at most 64).
func (e *Entry) History() []*Meta {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*Meta(nil), e.history...)
}

// State returns the latest state, PENDING if none.
func (e *Entry) State() State {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.latest == nil {
		return Pending
	}
	return e.latest.Status
}

// SetSendInfo records what the sender published.
func (e *Entry) SetSendInfo(info SendInfo) {
	e.mu.Lock()
	e.info, e.hasInfo = info, true
	e.mu.Unlock()
}

// SendInfo returns what the sender recorded, and whether it recorded it.
func (e *Entry) SendInfo() (SendInfo, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.info, e.hasInfo
}

// Observe merges facts learnt elsewhere (from Celery events, say): a
// non-empty worker, a higher retry count, a non-zero completion time, and
// the task name, when not already known.
func (e *Entry) Observe(worker string, retries int, dateDone time.Time, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if worker != "" {
		e.worker = worker
	}
	if retries > e.retries {
		e.retries = retries
	}
	if !dateDone.IsZero() && e.dateDone.IsZero() {
		e.dateDone = dateDone
	}
	if name != "" && e.info.Name == "" {
		e.info.Name = name
	}
}

// Worker, Retries and DateDone return what the entry has learnt.
func (e *Entry) Worker() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.worker
}

// Retries returns how many times the task has been retried, as far as
// this process has seen: the highest count a message or an event stated,
// or the number of RETRY messages, whichever is higher. (The two are kept
// apart: an event saying "retries 1" may arrive before the first RETRY
// message, and adding them up would count that retry twice.)
func (e *Entry) Retries() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return max(e.retries, e.retryMsgs)
}

// DateDone returns when the task became ready: the message's date_done
// when the worker sent one, else the time the ready state arrived here.
func (e *Entry) DateDone() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dateDone
}

// Subscribe returns a Subscription that receives every message recorded
// from now on, preceded by the ones already recorded. Close it when done.
func (e *Entry) Subscribe() *Subscription {
	s := &Subscription{signal: make(chan struct{}, 1), entry: e}
	e.mu.Lock()
	if e.subs == nil {
		e.subs = make(map[*Subscription]struct{})
	}
	e.subs[s] = struct{}{}
	s.mu.Lock()
	s.queue = append(s.queue, e.history...)
	n := len(s.queue)
	s.mu.Unlock()
	e.mu.Unlock()
	if n > 0 {
		s.signal <- struct{}{}
	}
	return s
}

// Subscription is an unbounded, ordered feed of one entry's messages. The
// entry appends without blocking; the reader drains on its own goroutine.
type Subscription struct {
	entry  *Entry
	mu     sync.Mutex
	queue  []*Meta
	signal chan struct{}
}

func (s *Subscription) push(m *Meta) {
	s.mu.Lock()
	s.queue = append(s.queue, m)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// Ready is signalled when messages are waiting to be taken.
func (s *Subscription) Ready() <-chan struct{} { return s.signal }

// Take returns and clears the waiting messages, in order.
func (s *Subscription) Take() []*Meta {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue = nil
	return q
}

// Close stops the subscription.
func (s *Subscription) Close() {
	s.entry.mu.Lock()
	delete(s.entry.subs, s)
	s.entry.mu.Unlock()
}
