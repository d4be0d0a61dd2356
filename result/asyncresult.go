package result

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/stalk-dev/stalk/promise"
)

// AsyncResult is a handle on one Celery task's result. Accessors that only
// read what has arrived (State, Ready, Result, ...) never block; Get blocks
// under its ctx. An AsyncResult is safe for concurrent use.
type AsyncResult struct {
	id      string
	backend Backend
	parent  *AsyncResult
	app     any
	name    string
	ignored bool

	attach sync.Once
	entry  *Entry

	// childOf is the id of the task whose children list this result came
	// from, when it was built by Children.
	childOf string

	mu       sync.Mutex
	children []Result
	graph    *Graph
}

// New returns the AsyncResult for id, read through backend. An empty id
// gives a result that never reads the backend: Get and Then report
// ErrEmptyID.
func New(id string, backend Backend, opts ...Option) *AsyncResult {
	r := &AsyncResult{id: id, backend: backend}
	for _, o := range opts {
		o(r)
	}
	if id == "" {
		e := NewEntry("")
		e.Fail(ErrEmptyID)
		r.entry = e
	}
	return r
}

// ID returns the task id (Celery's id and task_id).
func (r *AsyncResult) ID() string { return r.id }

// String returns the task id.
func (r *AsyncResult) String() string { return r.id }

// Parent returns the previous step of a chain, or nil.
//
// A Celery worker sends a chain's next step before it publishes the
// current step's result, so a step can settle before its parent does:
// after r.Get returns, wait on the parent (Get, Wait, or Collect) rather
// than reading its state.
func (r *AsyncResult) Parent() *AsyncResult { return r.parent }

// Backend returns the backend the result is read through.
func (r *AsyncResult) Backend() Backend { return r.backend }

// App returns the client that created the result, or nil.
func (r *AsyncResult) App() any { return r.app }

// Ignored reports whether the task was sent with ignore_result.
func (r *AsyncResult) Ignored() bool { return r.ignored }

// SupportsNativeJoin is true: results arrive on an event-driven consumer.
func (r *AsyncResult) SupportsNativeJoin() bool { return true }

// Entry returns the entry that records the task's states, attaching to the
// backend on first use. It is nil when the result has no backend.
func (r *AsyncResult) Entry() *Entry {
	r.attach.Do(func() {
		if r.entry == nil && r.backend != nil {
			r.entry = r.backend.Attach(r.id)
		}
	})
	return r.entry
}

func (r *AsyncResult) latest() *Meta {
	if e := r.Entry(); e != nil {
		return e.Latest()
	}
	return nil
}

// State returns the latest known state: PENDING until a message arrives.
func (r *AsyncResult) State() State {
	if m := r.latest(); m != nil {
		return m.Status
	}
	return Pending
}

// Status is State.
func (r *AsyncResult) Status() State { return r.State() }

// Ready reports whether the task is in a ready state.
func (r *AsyncResult) Ready() bool { return r.State().Ready() }

// Successful reports whether the task succeeded.
func (r *AsyncResult) Successful() bool { return r.State() == Success }

// Failed reports whether the task failed (REVOKED is not failed, as in
// Celery).
func (r *AsyncResult) Failed() bool { return r.State() == Failure }

// Result returns the latest state's payload without blocking: the return
// value after SUCCESS; a *TaskError for FAILURE, REVOKED and RETRY; the
// {"pid", "hostname"} map for STARTED; the meta of a custom state; nil while
// PENDING.
func (r *AsyncResult) Result() any {
	m := r.latest()
	if m == nil {
		return nil
	}
	if te := m.Err(); te != nil {
		return te
	}
	return m.Result
}

// Info is Result.
func (r *AsyncResult) Info() any { return r.Result() }

// Traceback returns the remote traceback of the latest state, or "".
func (r *AsyncResult) Traceback() string {
	if m := r.latest(); m != nil {
		return m.Traceback
	}
	return ""
}

// MaybeThrow returns the task's *TaskError if its state propagates
// (FAILURE or REVOKED), and nil otherwise. It does not block.
// (Celery's maybe_throw and maybe_reraise.)
func (r *AsyncResult) MaybeThrow() error {
	m := r.latest()
	if m != nil && m.Status.Propagates() {
		return m.Err()
	}
	return nil
}

// Throw settles this process's view of the result with err: waiters get err
// and callbacks see it. Nothing is sent to the broker.
func (r *AsyncResult) Throw(err error) {
	if e := r.Entry(); e != nil {
		e.Fail(err)
	}
}

// Name returns the task name, when the sender or an event recorded it.
func (r *AsyncResult) Name() string {
	if e := r.Entry(); e != nil {
		if info, _ := e.SendInfo(); info.Name != "" {
			return info.Name
		}
		if m := e.Latest(); m != nil && m.Name != "" {
			return m.Name
		}
	}
	return r.name
}

// Args returns the positional arguments the task was sent with, when known.
func (r *AsyncResult) Args() []any {
	if e := r.Entry(); e != nil {
		if info, ok := e.SendInfo(); ok {
			return info.Args
		}
		if m := e.Latest(); m != nil {
			return m.Args
		}
	}
	return nil
}

// Kwargs returns the keyword arguments the task was sent with, when known.
func (r *AsyncResult) Kwargs() map[string]any {
	if e := r.Entry(); e != nil {
		if info, ok := e.SendInfo(); ok {
			return info.Kwargs
		}
		if m := e.Latest(); m != nil {
			return m.Kwargs
		}
	}
	return nil
}

// Queue returns the queue the task was sent to, when known.
func (r *AsyncResult) Queue() string {
	if e := r.Entry(); e != nil {
		if info, ok := e.SendInfo(); ok && info.Queue != "" {
			return info.Queue
		}
		if m := e.Latest(); m != nil {
			return m.Queue
		}
	}
	return ""
}

// Worker returns the nodename of the worker that ran the task, learnt from
// its STARTED message or from events, or "".
func (r *AsyncResult) Worker() string {
	if e := r.Entry(); e != nil {
		return e.Worker()
	}
	return ""
}

// Retries returns how many times the task was retried, as seen so far.
func (r *AsyncResult) Retries() int {
	if e := r.Entry(); e != nil {
		return e.Retries()
	}
	return 0
}

// DateDone returns when the task became ready, or the zero time.
func (r *AsyncResult) DateDone() time.Time {
	if e := r.Entry(); e != nil {
		return e.DateDone()
	}
	return time.Time{}
}

// Exists reports whether a result for the task is stored or known.
//
// In per-task mode it looks for a stored message in the task's reply
// queue. A reader that is reading the final state holds it for that moment
// (it puts it back for the next reader once read, or when its process
// exits), so a check that lands in that window can answer false.
func (r *AsyncResult) Exists(ctx context.Context) (bool, error) {
	if r.id == "" {
		return false, ErrEmptyID
	}
	if r.backend == nil {
		return false, ErrNoBackend
	}
	return r.backend.Exists(ctx, r.id)
}

// Forget drops the result, and its parents' results, locally and in the
// broker.
func (r *AsyncResult) Forget(ctx context.Context) error {
	if r.parent != nil {
		if err := r.parent.Forget(ctx); err != nil {
			return err
		}
	}
	if r.id == "" {
		return ErrEmptyID
	}
	if r.backend == nil {
		return ErrNoBackend
	}
	return r.backend.Forget(ctx, r.id)
}

// Release tells the backend to stop following the task in this process:
// pending waits end with an error wrapping ErrReleased, and the backend
// frees what it held for the task (in per-task mode, its reply-queue
// consumer). Nothing is deleted: a later AsyncResult for the same id
// follows it again and gets the stored result. Use it for ids that may
// never get a result, such as ids a caller typed in, so that they do not
// stay followed until the client closes. Release of a ready result does
// nothing.
func (r *AsyncResult) Release() error {
	if r.id == "" {
		return ErrEmptyID
	}
	rl, ok := r.backend.(Releaser)
	if !ok {
		return fmt.Errorf("stalk: backend %T cannot release a result", r.backend)
	}
	rl.Release(r.id)
	return nil
}

// Revoke asks the workers to revoke the task: Celery's
// revoke(terminate, signal, wait, timeout) as revoke.Terminate(),
// revoke.Signal(...), revoke.Wait(timeout). Without revoke.Wait it returns
// once the broker has confirmed the broadcast, with no replies.
func (r *AsyncResult) Revoke(ctx context.Context, opts ...ControlOption) ([]ControlReply, error) {
	rv, ok := r.backend.(Revoker)
	if !ok {
		return nil, fmt.Errorf("stalk: backend %T cannot revoke", r.backend)
	}
	return rv.Revoke(ctx, []string{r.id}, opts...)
}

// RevokeByStampedHeaders revokes every task stamped with one of the given
// header values (Celery 5.3+ workers).
func (r *AsyncResult) RevokeByStampedHeaders(ctx context.Context, headers map[string][]string, opts ...ControlOption) ([]ControlReply, error) {
	rv, ok := r.backend.(Revoker)
	if !ok {
		return nil, fmt.Errorf("stalk: backend %T cannot revoke", r.backend)
	}
	return rv.RevokeByStampedHeaders(ctx, headers, opts...)
}

// Wait is Get.
func (r *AsyncResult) Wait(ctx context.Context, opts ...GetOption) (any, error) {
	return r.Get(ctx, opts...)
}

// Get waits until the task is ready and returns its value. A FAILURE or
// REVOKED task returns its *TaskError as the error (or, with
// Propagate(false), as the value). When ctx's deadline or Timeout passes
// first, the error satisfies both errors.Is(err, ErrTimeout) and
// errors.Is(err, context.DeadlineExceeded). A task sent with ignore_result
// returns nil at once.
func (r *AsyncResult) Get(ctx context.Context, opts ...GetOption) (any, error) {
	m, cfg, err := r.wait(ctx, opts)
	if err != nil {
		return nil, err
	}
	if m == nil {
		return nil, nil
	}
	var v any = m.Result
	if te := m.Err(); te != nil {
		if cfg.propagate {
			return nil, te
		}
		v = te
	}
	if cfg.callback != nil {
		cfg.callback(r.id, v)
	}
	return v, nil
}

// GetMeta waits like Get and returns the whole ready message. It returns an
// error only for transport failures and timeouts, never for the task's own
// failure.
func (r *AsyncResult) GetMeta(ctx context.Context, opts ...GetOption) (*Meta, error) {
	m, _, err := r.wait(ctx, append(opts, Propagate(false)))
	return m, err
}

// GetInto waits like Get and decodes the value into dst with
// encoding/json, exactly as the worker sent it (kombu envelopes are turned
// into their Go forms first).
func (r *AsyncResult) GetInto(ctx context.Context, dst any, opts ...GetOption) error {
	m, cfg, err := r.wait(ctx, opts)
	if err != nil {
		return err
	}
	if m == nil {
		return nil
	}
	if te := m.Err(); te != nil && cfg.propagate {
		return te
	}
	if err := decodeInto(m, dst); err != nil {
		return err
	}
	if cfg.callback != nil {
		cfg.callback(r.id, dst)
	}
	return nil
}

// GetAs waits like Get and returns the value decoded as T.
func GetAs[T any](ctx context.Context, r *AsyncResult, opts ...GetOption) (T, error) {
	var v T
	err := r.GetInto(ctx, &v, opts...)
	return v, err
}

func decodeInto(m *Meta, dst any) error {
	raw := []byte(m.RawResult)
	if len(raw) == 0 || strings.Contains(string(raw), `"__type__"`) {
		b, err := json.Marshal(toJSONCompatible(m.Result))
		if err != nil {
			return fmt.Errorf("stalk: re-encode result of task %s: %w", m.TaskID, err)
		}
		raw = b
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("stalk: decode result of task %s into %T: %w", m.TaskID, dst, err)
	}
	return nil
}

// wait blocks until the entry's promise settles, running OnMessage and
// OnInterval callbacks on this goroutine. It returns nil, nil for ignored
// results.
func (r *AsyncResult) wait(ctx context.Context, opts []GetOption) (*Meta, getConfig, error) {
	cfg := newGetConfig(opts)
	if r.ignored {
		return nil, cfg, nil
	}
	e := r.Entry()
	if e == nil {
		return nil, cfg, ErrNoBackend
	}
	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	var parentFailed chan error
	if cfg.followParents && cfg.propagate && r.parent != nil {
		parentFailed = r.watchParents()
	}
	var sub *Subscription
	var subReady <-chan struct{}
	if cfg.onMessage != nil {
		sub = e.Subscribe()
		defer sub.Close()
		subReady = sub.Ready()
	}
	var tick <-chan time.Time
	if cfg.onInterval != nil && cfg.interval > 0 {
		t := time.NewTicker(cfg.interval)
		defer t.Stop()
		tick = t.C
	}
	deliver := func() {
		if sub == nil {
			return
		}
		for _, m := range sub.Take() {
			cfg.onMessage(*m)
		}
	}
	done := e.Promise().Done()
	for {
		select {
		case <-done:
			deliver()
			m, _, err := e.Promise().Peek()
			if perr := r.failedAncestor(ctx, cfg, m, err); perr != nil {
				return nil, cfg, perr
			}
			if err == nil && cfg.forget {
				// Best effort: the value is here; a queue that cannot be
				// deleted now expires by itself.
				_ = r.Forget(ctx)
			}
			return m, cfg, err
		case err := <-parentFailed:
			return nil, cfg, err
		case <-subReady:
			deliver()
		case <-tick:
			cfg.onInterval()
		case <-ctx.Done():
			// A result that settled at the same moment wins.
			if m, ok, err := e.Promise().Peek(); ok {
				deliver()
				return m, cfg, err
			}
			var err error = fmt.Errorf("stalk: waiting for task %s: %w", r.id, ctx.Err())
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				err = &timeoutError{id: r.id, cause: ctx.Err(), lost: e.Disrupted(), unreachable: e.Unreachable()}
			}
			if ferr := r.foreignChildErr(e, err); ferr != nil {
				err = ferr
			}
			return nil, cfg, err
		}
	}
}

// watchParents returns a channel that receives the error of the first
// ancestor that ends in a propagating state. Ancestors already failed are
// reported at once.
func (r *AsyncResult) watchParents() chan error {
	var ancestors []*AsyncResult
	for p := r.parent; p != nil; p = p.parent {
		ancestors = append(ancestors, p)
	}
	ch := make(chan error, len(ancestors))
	// Root first, as Celery checks them.
	for i := len(ancestors) - 1; i >= 0; i-- {
		a := ancestors[i]
		e := a.Entry()
		if e == nil {
			continue
		}
		e.Promise().OnSettle(func(m *Meta, err error) {
			if err == nil && m != nil && m.Status.Propagates() {
				select {
				case ch <- m.Err():
				default:
				}
			}
		})
	}
	return ch
}

// Then registers callbacks for when the task is ready: onValue with the
// value after SUCCESS, onError with the *TaskError after FAILURE or REVOKED,
// or with the transport error (ErrClosed, ...). Either may be nil. They run
// off the consumer's goroutine, in registration order. The returned promise
// settles with the value or error once the callback has returned. For a
// task sent with ignore_result, as with Get, onValue runs at once with nil.
func (r *AsyncResult) Then(onValue func(v any), onError func(err error)) *promise.Promise[any] {
	return r.ThenContext(context.Background(), onValue, onError)
}

// ThenContext is Then bound to ctx: if ctx ends before the task is ready,
// the callbacks are dropped, so they can be collected, and the returned
// promise is rejected with ctx's error. (Celery's weak=True.)
func (r *AsyncResult) ThenContext(ctx context.Context, onValue func(v any), onError func(err error)) *promise.Promise[any] {
	if r.ignored {
		return r.thenIgnored(onValue)
	}
	e := r.Entry()
	if e == nil {
		return promise.Rejected[any](ErrNoBackend)
	}
	out := promise.New[any]()
	type callbacks struct {
		onValue func(any)
		onError func(error)
	}
	var mu sync.Mutex
	cbs := &callbacks{onValue, onError}
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		cbs = nil
		mu.Unlock()
		out.Reject(ctx.Err())
	})
	e.Promise().OnSettle(func(m *Meta, err error) {
		if !stop() {
			return // ctx ended first: dropped
		}
		mu.Lock()
		c := cbs
		mu.Unlock()
		defer func() {
			if p := recover(); p != nil {
				out.Reject(fmt.Errorf("%w: %v", promise.ErrPanic, p))
			}
		}()
		if err == nil && m.Status.Propagates() {
			err = m.Err()
		}
		if err != nil {
			if c != nil && c.onError != nil {
				c.onError(err)
			}
			out.Reject(err)
			return
		}
		if c != nil && c.onValue != nil {
			c.onValue(m.Result)
		}
		out.Resolve(m.Result)
	})
	return out
}

// thenIgnored settles Then of an ignored result: no result will come, so it
// is nil, as Get returns.
func (r *AsyncResult) thenIgnored(onValue func(v any)) (p *promise.Promise[any]) {
	defer func() {
		if v := recover(); v != nil {
			p = promise.Rejected[any](fmt.Errorf("%w: %v", promise.ErrPanic, v))
		}
	}()
	if onValue != nil {
		onValue(nil)
	}
	return promise.Resolved[any](nil)
}
