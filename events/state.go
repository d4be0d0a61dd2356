package events

import (
	"container/list"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/result"
)

// StateFor returns the state a task event type moves a task to:
// task-received → RECEIVED, ..., and "task-xyz" → "XYZ" for other task
// events. It returns "" for non-task events.
func StateFor(typ string) result.State {
	switch typ {
	case TypeTaskSent:
		return result.Pending
	case TypeTaskReceived:
		return result.Received
	case TypeTaskStarted:
		return result.Started
	case TypeTaskSucceeded:
		return result.Success
	case TypeTaskFailed:
		return result.Failure
	case TypeTaskRetried:
		return result.Retry
	case TypeTaskRevoked:
		return result.Revoked
	case TypeTaskRejected:
		return result.Rejected
	}
	if IsTask(typ) {
		return result.State(strings.ToUpper(typ[5:]))
	}
	return ""
}

// Task is what the event stream says about one task. Fields an event has
// not carried yet are zero.
type Task struct {
	ID        string
	State     result.State
	Name      string
	Args      string // Python repr
	Kwargs    string // Python repr
	RootID    string
	ParentID  string
	Children  []string // ids of tasks whose parent_id is this task
	Worker    string   // nodename of the worker that sent the latest worker-side event
	Client    string   // hostname of the sender of task-sent
	Retries   int
	ETA       string // ISO-8601, as sent
	Expires   string // ISO-8601, as sent
	Result    string // saferepr of the return value
	Exception string // repr of the exception (FAILURE or RETRY)
	Traceback string
	Runtime   time.Duration
	// Revocation details, from task-revoked.
	Terminated bool
	Signum     string
	Expired    bool
	Requeue    bool // from task-rejected

	// Timestamp is the time of the event that set State; Clock is the
	// highest Lamport clock among the events merged.
	Timestamp time.Time
	Clock     int64
	// When each kind of event was seen (the sender's timestamp), zero if
	// never.
	Sent, Received, Started, Succeeded, Failed, Retried, Revoked, Rejected time.Time
	// Updated is the local time of the latest event merged.
	Updated time.Time
	// Extra holds the fields of custom task events (task-xyz) that have
	// no field above.
	Extra map[string]any
}

// Ready reports whether the task has reached a final state.
func (t Task) Ready() bool { return t.State.Ready() }

// Worker is what the event stream says about one worker.
type Worker struct {
	Hostname string
	PID      int
	WorkerInfo
	// Heartbeats are the local receive times of the latest (at most 4)
	// worker events, oldest first; worker-offline clears them.
	Heartbeats []time.Time
	// Online is false after worker-offline.
	Online bool
	// Alive is computed when the snapshot is taken: Heartbeats is not
	// empty and now < last heartbeat + 2·Freq (Celery's rule).
	Alive bool
	// Updated is the local time of the latest event.
	Updated time.Time
}

// HeartbeatExpires returns when the worker stops being alive unless
// another heartbeat arrives, or the zero time if it has no heartbeats.
func (w Worker) HeartbeatExpires() time.Time {
	if len(w.Heartbeats) == 0 {
		return time.Time{}
	}
	freq := w.Freq
	if freq <= 0 {
		freq = defaultFreq
	}
	return w.Heartbeats[len(w.Heartbeats)-1].Add(secondsToDuration(freq * 2))
}

const (
	defaultFreq   = 60.0 // seconds; Celery's Worker default when freq is unknown
	maxHeartbeats = 4
)

// Defaults for State options.
const (
	DefaultMaxTasks   = 10000
	DefaultMaxWorkers = 5000
)

// StateOption configures a State.
type StateOption func(*stateConfig)

type stateConfig struct {
	maxTasks   int
	maxWorkers int
	now        func() time.Time
	log        zerolog.Logger
}

// MaxTasks bounds how many tasks the State keeps. When it is exceeded, the
// least recently updated finished task (SUCCESS, FAILURE, REVOKED) is
// evicted, or the least recently updated task if none has finished.
// Default: DefaultMaxTasks (10,000). Values below 1 mean 1.
func MaxTasks(n int) StateOption { return func(c *stateConfig) { c.maxTasks = max(n, 1) } }

// MaxWorkers bounds how many workers the State keeps; the least recently
// updated is evicted. Default: DefaultMaxWorkers (5,000).
func MaxWorkers(n int) StateOption { return func(c *stateConfig) { c.maxWorkers = max(n, 1) } }

// WithClock sets the clock used for liveness (Alive, Worker.Alive) and for
// events that carry no receive time. Default: time.Now.
func WithClock(now func() time.Time) StateOption { return func(c *stateConfig) { c.now = now } }

// WithStateLogger sets the State's logger. Default: zerolog.Nop().
func WithStateLogger(l zerolog.Logger) StateOption { return func(c *stateConfig) { c.log = l } }

// State merges events into the tasks and workers they describe, as
// Celery's celery.events.state does (and so Flower): out-of-order events
// are merged by state precedence, and workers are alive while their
// heartbeats are fresh. Memory is bounded (MaxTasks, MaxWorkers).
//
// Feed it from a subscription, whose goroutine then does the merging:
//
//	st := events.NewState()
//	sub, err := recv.Subscribe(ctx, st.Apply)
//
// All methods are safe for concurrent use.
type State struct {
	cfg stateConfig

	mu       sync.Mutex
	tasks    map[string]*taskEntry
	finished *list.List // of *taskEntry, least recently updated first
	running  *list.List // of *taskEntry not Ready, least recently updated first
	workers  map[string]*workerEntry
	wlru     *list.List // of *workerEntry
	onTask   []func(Task)
	onWorker []func(Worker)
	evicted  uint64
}

type taskEntry struct {
	t    Task
	elem *list.Element
}

type workerEntry struct {
	w    Worker
	elem *list.Element
}

// NewState returns an empty State.
func NewState(opts ...StateOption) *State {
	cfg := stateConfig{maxTasks: DefaultMaxTasks, maxWorkers: DefaultMaxWorkers, now: time.Now, log: zerolog.Nop()}
	for _, o := range opts {
		o(&cfg)
	}
	return &State{
		cfg:      cfg,
		tasks:    map[string]*taskEntry{},
		finished: list.New(),
		running:  list.New(),
		workers:  map[string]*workerEntry{},
		wlru:     list.New(),
	}
}

// OnTask registers fn, called with a snapshot of a task after every event
// that changed it. fn runs on the goroutine that called Apply (a
// subscription's goroutine when fed by Subscribe), after the State's lock
// is released, so it may query the State; it should return quickly.
func (s *State) OnTask(fn func(Task)) {
	s.mu.Lock()
	s.onTask = append(s.onTask, fn)
	s.mu.Unlock()
}

// OnWorker registers fn, called with a snapshot of a worker after every
// event from it. It runs like OnTask's functions.
func (s *State) OnWorker(fn func(Worker)) {
	s.mu.Lock()
	s.onWorker = append(s.onWorker, fn)
	s.mu.Unlock()
}

// Apply merges one event. Its signature fits Receiver.Subscribe. Events
// of no known kind are ignored, except custom task events (task-xyz),
// which set the custom state "XYZ".
func (s *State) Apply(ev Event) {
	if ev == nil {
		return
	}
	h := ev.EventHeader()
	local := h.Received
	if local.IsZero() {
		local = s.cfg.now()
	}
	var (
		task   *Task
		worker *Worker
	)
	s.mu.Lock()
	if IsWorker(h.Type) {
		worker = s.workerEvent(ev, h, local)
	} else if te, ok := ev.(TaskEvent); ok && IsTask(h.Type) && te.TaskID() != "" {
		task, worker = s.taskEvent(te, h, local)
	}
	var tf []func(Task)
	var wf []func(Worker)
	if task != nil {
		tf = s.onTask
	}
	if worker != nil {
		wf = s.onWorker
	}
	s.mu.Unlock()
	for _, fn := range tf {
		fn(*task)
	}
	for _, fn := range wf {
		fn(*worker)
	}
}

// workerEvent is called with s.mu held.
func (s *State) workerEvent(ev Event, h *Header, local time.Time) *Worker {
	we := s.worker(h.Hostname, local)
	w := &we.w
	w.PID = h.PID
	switch e := ev.(type) {
	case *WorkerOnline:
		w.WorkerInfo = e.WorkerInfo
		w.Online = true
		w.heartbeat(local)
	case *WorkerHeartbeat:
		w.WorkerInfo = e.WorkerInfo
		w.Online = true
		w.heartbeat(local)
	case *WorkerOffline:
		w.WorkerInfo = e.WorkerInfo
		w.Online = false
		w.Heartbeats = nil
	default:
		w.heartbeat(local)
	}
	snap := s.workerSnapshot(w)
	return &snap
}

func (w *Worker) heartbeat(at time.Time) {
	if n := len(w.Heartbeats); n == 0 || !at.Before(w.Heartbeats[n-1]) {
		w.Heartbeats = append(w.Heartbeats, at)
	} else {
		// Insert in order.
		i := n
		for i > 0 && at.Before(w.Heartbeats[i-1]) {
			i--
		}
		w.Heartbeats = append(w.Heartbeats, time.Time{})
		copy(w.Heartbeats[i+1:], w.Heartbeats[i:])
		w.Heartbeats[i] = at
	}
	if len(w.Heartbeats) > maxHeartbeats {
		w.Heartbeats = append(w.Heartbeats[:0:0], w.Heartbeats[len(w.Heartbeats)-maxHeartbeats:]...)
	}
}

// worker returns the entry for hostname, creating it; s.mu is held.
func (s *State) worker(hostname string, local time.Time) *workerEntry {
	we, ok := s.workers[hostname]
	if ok {
		s.wlru.MoveToBack(we.elem)
	} else {
		we = &workerEntry{w: Worker{Hostname: hostname}}
		we.elem = s.wlru.PushBack(we)
		s.workers[hostname] = we
		for len(s.workers) > s.cfg.maxWorkers {
			old := s.wlru.Remove(s.wlru.Front()).(*workerEntry)
			delete(s.workers, old.w.Hostname)
		}
	}
	we.w.Updated = local
	return we
}

// taskEvent is called with s.mu held. It implements Celery's
// Task.event merge.
func (s *State) taskEvent(ev TaskEvent, h *Header, local time.Time) (*Task, *Worker) {
	id := ev.TaskID()
	te := s.tasks[id]
	if te == nil {
		te = &taskEntry{t: Task{ID: id, State: result.Pending}}
		s.tasks[id] = te
		te.elem = s.running.PushBack(te)
	}
	t := &te.t
	wasReady := t.State.Ready()
	state := StateFor(h.Type)
	at := h.Time

	// The attribute named after the event is always set.
	switch h.Type {
	case TypeTaskSent:
		t.Sent = at
	case TypeTaskReceived:
		t.Received = at
	case TypeTaskStarted:
		t.Started = at
	case TypeTaskSucceeded:
		t.Succeeded = at
	case TypeTaskFailed:
		t.Failed = at
	case TypeTaskRetried:
		t.Retried = at
	case TypeTaskRevoked:
		t.Revoked = at
	case TypeTaskRejected:
		t.Rejected = at
	}
	// An event whose state ranks lower than the current one logically
	// happened before it: keep the state, merge fields only (for RECEIVED,
	// only the task's identity fields). RETRY on either side always
	// overwrites.
	lower := state != result.Retry && t.State != result.Retry && state.Precedes(t.State)
	if !lower {
		t.State = state
		t.Timestamp = at
	}
	t.Clock = max(t.Clock, h.Clock)
	mergeFields(t, ev)
	t.Updated = local

	var worker *Worker
	if h.Type == TypeTaskSent {
		t.Client = h.Hostname
	} else if h.Hostname != "" {
		t.Worker = h.Hostname
		we := s.worker(h.Hostname, local)
		we.w.heartbeat(local)
		snap := s.workerSnapshot(&we.w)
		worker = &snap
	}
	if t.ParentID != "" {
		s.linkChild(t.ParentID, id)
	}
	// Keep the LRU lists in order: most recently updated at the back.
	if ready := t.State.Ready(); ready != wasReady {
		if ready {
			s.running.Remove(te.elem)
			te.elem = s.finished.PushBack(te)
		} else {
			s.finished.Remove(te.elem)
			te.elem = s.running.PushBack(te)
		}
	} else if ready {
		s.finished.MoveToBack(te.elem)
	} else {
		s.running.MoveToBack(te.elem)
	}
	s.evict()
	snap := t.snapshot()
	return &snap, worker
}

// mergeFields copies the fields ev carries into t. (Celery merges only the
// identity fields of a late task-received; those are all it carries.)
func mergeFields(t *Task, ev TaskEvent) {
	switch e := ev.(type) {
	case *TaskSent:
		t.Name, t.Args, t.Kwargs = e.Name, e.Args, e.Kwargs
		t.RootID, t.ParentID, t.Retries = e.RootID, e.ParentID, e.Retries
		t.ETA, t.Expires = e.ETA, e.Expires
	case *TaskReceived:
		t.Name, t.Args, t.Kwargs = e.Name, e.Args, e.Kwargs
		t.RootID, t.ParentID, t.Retries = e.RootID, e.ParentID, e.Retries
		t.ETA, t.Expires = e.ETA, e.Expires
	case *TaskSucceeded:
		t.Result, t.Runtime = e.Result, e.Runtime
	case *TaskFailed:
		t.Exception, t.Traceback = e.Exception, e.Traceback
	case *TaskRetried:
		t.Exception, t.Traceback = e.Exception, e.Traceback
	case *TaskRevoked:
		t.Terminated, t.Signum, t.Expired = e.Terminated, e.Signum, e.Expired
	case *TaskRejected:
		t.Requeue = e.Requeue
	case *Unknown:
		for k, v := range e.Fields {
			switch k {
			case "type", "uuid", "hostname", "utcoffset", "pid", "clock", "timestamp":
				continue
			case "name":
				if s, ok := v.(string); ok {
					t.Name = s
					continue
				}
			case "result":
				if s, ok := v.(string); ok {
					t.Result = s
					continue
				}
			case "exception":
				if s, ok := v.(string); ok {
					t.Exception = s
					continue
				}
			case "traceback":
				if s, ok := v.(string); ok {
					t.Traceback = s
					continue
				}
			}
			if t.Extra == nil {
				t.Extra = map[string]any{}
			}
			t.Extra[k] = v
		}
	}
}

// linkChild records child under parent, creating a PENDING parent entry
// if the parent has not been seen yet; s.mu is held.
func (s *State) linkChild(parent, child string) {
	if parent == child {
		return // a retry's parent_id is its own id
	}
	pe := s.tasks[parent]
	if pe == nil {
		pe = &taskEntry{t: Task{ID: parent, State: result.Pending}}
		s.tasks[parent] = pe
		// New placeholders are the least recently updated of all.
		pe.elem = s.running.PushFront(pe)
	}
	for _, c := range pe.t.Children {
		if c == child {
			return
		}
	}
	pe.t.Children = append(pe.t.Children, child)
}

// evict enforces MaxTasks; s.mu is held.
func (s *State) evict() {
	for len(s.tasks) > s.cfg.maxTasks {
		l := s.finished
		if l.Len() == 0 {
			l = s.running
		}
		te := l.Remove(l.Front()).(*taskEntry)
		delete(s.tasks, te.t.ID)
		s.evicted++
	}
}

func (t *Task) snapshot() Task {
	c := *t
	c.Children = append([]string(nil), t.Children...)
	if t.Extra != nil {
		c.Extra = make(map[string]any, len(t.Extra))
		for k, v := range t.Extra {
			c.Extra[k] = v
		}
	}
	return c
}

// workerSnapshot copies w and computes Alive; s.mu is held.
func (s *State) workerSnapshot(w *Worker) Worker {
	c := *w
	c.Heartbeats = append([]time.Time(nil), w.Heartbeats...)
	c.Loadavg = append([]float64(nil), w.Loadavg...)
	c.Alive = len(c.Heartbeats) > 0 && s.cfg.now().Before(c.HeartbeatExpires())
	return c
}

// Task returns what is known about the task with id.
func (s *State) Task(id string) (Task, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	te, ok := s.tasks[id]
	if !ok {
		return Task{}, false
	}
	return te.t.snapshot(), true
}

// Tasks returns the tasks for which keep returns true (every task if keep
// is nil), least recently updated first. keep runs with the State locked:
// it must not call the State.
func (s *State) Tasks(keep func(Task) bool) []Task {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Task, 0, len(s.tasks))
	for _, l := range []*list.List{s.finished, s.running} {
		for e := l.Front(); e != nil; e = e.Next() {
			t := &e.Value.(*taskEntry).t
			if keep == nil || keep(*t) {
				out = append(out, t.snapshot())
			}
		}
	}
	// Merge the two lists' orders by Updated.
	sortTasks(out)
	return out
}

// TasksByState returns a filter for Tasks that keeps the given states.
func TasksByState(states ...result.State) func(Task) bool {
	return func(t Task) bool {
		for _, st := range states {
			if t.State == st {
				return true
			}
		}
		return false
	}
}

// Len returns how many tasks the State holds.
func (s *State) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tasks)
}

// Evicted returns how many tasks MaxTasks has evicted.
func (s *State) Evicted() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.evicted
}

// Worker returns what is known about the worker with this nodename.
func (s *State) Worker(hostname string) (Worker, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	we, ok := s.workers[hostname]
	if !ok {
		return Worker{}, false
	}
	return s.workerSnapshot(&we.w), true
}

// Workers returns every known worker, least recently updated first.
func (s *State) Workers() []Worker {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Worker, 0, len(s.workers))
	for e := s.wlru.Front(); e != nil; e = e.Next() {
		out = append(out, s.workerSnapshot(&e.Value.(*workerEntry).w))
	}
	return out
}

// Alive reports whether the worker's last heartbeat is fresh: now (the
// State's clock) is before the last heartbeat + 2·freq, and it has not
// gone offline.
func (s *State) Alive(hostname string) bool {
	w, ok := s.Worker(hostname)
	return ok && w.Alive
}
