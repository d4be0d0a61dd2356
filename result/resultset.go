package result

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/stalk-dev/stalk/promise"
)

// ErrNotMember is returned by ResultSet.Remove for a result the set does
// not hold (Celery's KeyError).
var ErrNotMember = errors.New("stalk: result is not in the set")

// ResultSet is a set of results waited on together (Celery's ResultSet).
// Waiting is event-driven: Join, Iter and Then subscribe to each member's
// promise, which the backend's single consumer settles, so joining 10,000
// results costs no polling and no goroutine per member. A ResultSet is safe
// for concurrent use.
type ResultSet struct {
	mu      sync.Mutex
	results []*AsyncResult
}

// NewResultSet returns a set of the given results, in order, without
// duplicates (by id).
func NewResultSet(results ...*AsyncResult) *ResultSet {
	s := &ResultSet{}
	s.Update(results...)
	return s
}

// Results returns the members, in order.
func (s *ResultSet) Results() []*AsyncResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.results)
}

// Len returns the number of members.
func (s *ResultSet) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.results)
}

func (s *ResultSet) index(id string) int {
	return slices.IndexFunc(s.results, func(x *AsyncResult) bool { return x.id == id })
}

// Add appends r unless a result with its id is already a member.
func (s *ResultSet) Add(r *AsyncResult) {
	if r == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.index(r.id) < 0 {
		s.results = append(s.results, r)
	}
}

// Update adds each result, as Add does.
func (s *ResultSet) Update(results ...*AsyncResult) {
	for _, r := range results {
		s.Add(r)
	}
}

// Remove removes the member with r's id, or returns an error wrapping
// ErrNotMember.
func (s *ResultSet) Remove(r *AsyncResult) error {
	if r == nil {
		return fmt.Errorf("%w: nil", ErrNotMember)
	}
	return s.RemoveID(r.id)
}

// RemoveID removes the member with the given id, or returns an error
// wrapping ErrNotMember.
func (s *ResultSet) RemoveID(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.index(id)
	if i < 0 {
		return fmt.Errorf("%w: %s", ErrNotMember, id)
	}
	s.results = slices.Delete(s.results, i, i+1)
	return nil
}

// Discard removes the member with r's id, if there is one.
func (s *ResultSet) Discard(r *AsyncResult) {
	if r != nil {
		_ = s.RemoveID(r.id)
	}
}

// Clear removes every member.
func (s *ResultSet) Clear() {
	s.mu.Lock()
	s.results = nil
	s.mu.Unlock()
}

// CompletedCount returns the number of members that succeeded (Celery's
// completed_count counts successes only).
func (s *ResultSet) CompletedCount() int {
	n := 0
	for _, r := range s.Results() {
		if r.Successful() {
			n++
		}
	}
	return n
}

// Ready reports whether every member is ready. An empty set is ready.
func (s *ResultSet) Ready() bool {
	for _, r := range s.Results() {
		if !memberReady(r) {
			return false
		}
	}
	return true
}

// Successful reports whether every member succeeded.
func (s *ResultSet) Successful() bool {
	for _, r := range s.Results() {
		if !r.Successful() {
			return false
		}
	}
	return true
}

// Failed reports whether any member failed (FAILURE; REVOKED is not
// failed, as in Celery).
func (s *ResultSet) Failed() bool {
	return slices.ContainsFunc(s.Results(), (*AsyncResult).Failed)
}

// Waiting reports whether any member is not ready yet.
func (s *ResultSet) Waiting() bool { return !s.Ready() }

// MaybeThrow returns the error of the first member, in member order, whose
// state propagates (FAILURE or REVOKED), or nil. It does not block.
func (s *ResultSet) MaybeThrow() error {
	for _, r := range s.Results() {
		if err := r.MaybeThrow(); err != nil {
			return err
		}
	}
	return nil
}

// SupportsNativeJoin is true: Join is event-driven.
func (s *ResultSet) SupportsNativeJoin() bool { return true }

// Forget forgets every member, locally and in the broker, and returns the
// errors joined.
func (s *ResultSet) Forget(ctx context.Context) error {
	var errs []error
	for _, r := range s.Results() {
		if err := r.Forget(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Revoke revokes every member with one broadcast that lists all their ids,
// as Celery does. It needs the members' backend to implement Revoker.
func (s *ResultSet) Revoke(ctx context.Context, opts ...ControlOption) ([]ControlReply, error) {
	members := s.Results()
	if len(members) == 0 {
		return nil, nil
	}
	ids := make([]string, len(members))
	var rv Revoker
	for i, r := range members {
		ids[i] = r.id
		if rv == nil {
			rv, _ = r.backend.(Revoker)
		}
	}
	if rv == nil {
		return nil, fmt.Errorf("stalk: backend %T cannot revoke", members[0].backend)
	}
	return rv.Revoke(ctx, ids, opts...)
}

// memberReady is Ready, with results sent with ignore_result counting as
// ready: nothing will ever arrive for them.
func memberReady(r *AsyncResult) bool { return r.ignored || r.Ready() }

// outcome returns the member's settled value and error: the value and nil
// after SUCCESS, the *TaskError after FAILURE or REVOKED, or the transport
// error. It must only be called once the member's promise has settled (or
// for an ignored result).
func outcome(r *AsyncResult) (any, *TaskError, error) {
	if r.ignored {
		return nil, nil, nil
	}
	m, _, err := r.Entry().Promise().Peek()
	if err != nil {
		return nil, nil, err
	}
	if te := m.Err(); te != nil {
		return nil, te, nil
	}
	return m.Result, nil, nil
}

// watch calls notify(i) once member i is ready (at once for ignored
// results). notify must not block. It fails when a member has no backend.
func watch(members []*AsyncResult, notify func(i int)) error {
	for _, r := range members {
		if !r.ignored && r.Entry() == nil {
			return fmt.Errorf("stalk: result %s: %w", r.id, ErrNoBackend)
		}
	}
	for i, r := range members {
		if r.ignored {
			notify(i)
			continue
		}
		r.Entry().Promise().OnSettle(func(*Meta, error) { notify(i) })
	}
	return nil
}

// arrivals returns a channel that receives the index of each member as it
// becomes ready. It is buffered for every member, so it never blocks the
// promises' dispatchers, even when nobody reads it any more.
//
// Members that are ready already come first, by the worker's completion
// time (date_done), and without a callback each: joining a large set whose
// results have mostly arrived starts no goroutine per member.
func arrivals(members []*AsyncResult) (<-chan int, error) {
	for _, r := range members {
		if !r.ignored && r.Entry() == nil {
			return nil, fmt.Errorf("stalk: result %s: %w", r.id, ErrNoBackend)
		}
	}
	ch := make(chan int, len(members))
	type ready struct {
		i    int
		done time.Time
	}
	var now []ready
	var later []int
	for i, r := range members {
		switch {
		case r.ignored:
			now = append(now, ready{i: i})
		case r.Entry().Promise().Settled():
			now = append(now, ready{i, r.Entry().DateDone()})
		default:
			later = append(later, i)
		}
	}
	sort.SliceStable(now, func(a, b int) bool {
		da, db := now[a].done, now[b].done
		if da.IsZero() || db.IsZero() {
			return !da.IsZero() && db.IsZero()
		}
		return da.Before(db)
	})
	for _, r := range now {
		ch <- r.i
	}
	// The rest are queued as they settle, after those above.
	for _, i := range later {
		members[i].Entry().Promise().OnSettle(func(*Meta, error) { ch <- i })
	}
	return ch, nil
}

// Iter yields the members in the order they become ready. The error is nil
// for a success, the member's *TaskError for FAILURE or REVOKED, or the
// transport error that failed it (ErrClosed, ...). If ctx ends first, Iter
// yields (nil, err) once, with err satisfying ErrTimeout for a deadline,
// and stops. Members added after the iteration started are not included.
func (s *ResultSet) Iter(ctx context.Context) iter.Seq2[*AsyncResult, error] {
	return func(yield func(*AsyncResult, error) bool) {
		members := s.Results()
		ch, err := arrivals(members)
		if err != nil {
			yield(nil, err)
			return
		}
		for left := len(members); left > 0; left-- {
			select {
			case i := <-ch:
				r := members[i]
				_, te, err := outcome(r)
				if te != nil {
					err = te
				}
				if !yield(r, err) {
					return
				}
			case <-ctx.Done():
				yield(nil, joinCtxErr(ctx, members))
				return
			}
		}
	}
}

// Get is Join, with the values as an []any.
func (s *ResultSet) Get(ctx context.Context, opts ...GetOption) (any, error) {
	v, err := s.Join(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Wait is Get.
func (s *ResultSet) Wait(ctx context.Context, opts ...GetOption) (any, error) {
	return s.Get(ctx, opts...)
}

// Join waits for every member and returns their values in member order
// (Celery's join_native). With Propagate(true), the default, it returns
// the first FAILURE or REVOKED to arrive as soon as it arrives; with
// Propagate(false) each failed member's *TaskError is its value. A
// transport error (ErrClosed, a deleted reply queue) is always returned.
// Timeout and ctx bound the whole join; Callback runs for each member as it
// arrives, in arrival order (members ready before the join first, in the
// order the worker finished them); OnInterval runs on Join's goroutine.
// OnMessage is not supported for sets (Celery refuses it too) and
// FollowParents has no effect.
func (s *ResultSet) Join(ctx context.Context, opts ...GetOption) ([]any, error) {
	cfg := newGetConfig(opts)
	if cfg.onMessage != nil {
		return nil, errors.New("stalk: OnMessage is not supported when joining a result set")
	}
	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	members := s.Results()
	ch, err := arrivals(members)
	if err != nil {
		return nil, err
	}
	var tick <-chan time.Time
	if cfg.onInterval != nil && cfg.interval > 0 {
		t := time.NewTicker(cfg.interval)
		defer t.Stop()
		tick = t.C
	}
	values := make([]any, len(members))
	for left := len(members); left > 0; {
		select {
		case i := <-ch:
			left--
			r := members[i]
			v, te, err := outcome(r)
			if err != nil {
				return nil, fmt.Errorf("stalk: joining results: task %s: %w", r.id, err)
			}
			if te != nil {
				if cfg.propagate {
					return nil, te
				}
				v = te
			}
			values[i] = v
			if cfg.callback != nil {
				cfg.callback(r.id, v)
			}
		case <-tick:
			cfg.onInterval()
		case <-ctx.Done():
			return nil, joinCtxErr(ctx, members)
		}
	}
	return values, nil
}

// joinTimeoutError is returned when a join's deadline passes. It satisfies
// ErrTimeout and context.DeadlineExceeded.
type joinTimeoutError struct {
	waiting []string // ids not ready, at most a few
	total   int
	nready  int
	cause   error
}

func (e *joinTimeoutError) Error() string {
	s := fmt.Sprintf("stalk: timed out joining %d results: %d not ready", e.total, e.total-e.nready)
	if len(e.waiting) > 0 {
		s += " (" + strings.Join(e.waiting, ", ")
		if e.total-e.nready > len(e.waiting) {
			s += ", ..."
		}
		s += ")"
	}
	return s
}

func (e *joinTimeoutError) Is(target error) bool {
	return target == ErrTimeout || target == context.DeadlineExceeded
}

func (e *joinTimeoutError) Unwrap() error { return e.cause }

func joinCtxErr(ctx context.Context, members []*AsyncResult) error {
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("stalk: joining %d results: %w", len(members), ctx.Err())
	}
	e := &joinTimeoutError{total: len(members), cause: ctx.Err()}
	for _, r := range members {
		if memberReady(r) {
			e.nready++
		} else if len(e.waiting) < 5 {
			e.waiting = append(e.waiting, r.id)
		}
	}
	return e
}

// Then registers callbacks for when every member is ready (Celery's
// then on a ResultSet): onValue with the values in member order if all
// succeeded, otherwise onError with the first failure in member order (a
// *TaskError or a transport error). Either may be nil. They run off the
// consumer's goroutine. The returned promise settles the same way once the
// callback has returned. Members added later are not waited for.
func (s *ResultSet) Then(onValue func(values []any), onError func(err error)) *promise.Promise[[]any] {
	out := promise.New[[]any]()
	members := s.Results()
	var mu sync.Mutex
	left := len(members)
	finish := func() {
		values := make([]any, len(members))
		for i, r := range members {
			v, te, err := outcome(r)
			if te != nil {
				err = te
			}
			if err != nil {
				if onError != nil {
					if perr := guard(func() { onError(err) }); perr != nil {
						out.Reject(perr)
						return
					}
				}
				out.Reject(err)
				return
			}
			values[i] = v
		}
		if onValue != nil {
			if perr := guard(func() { onValue(values) }); perr != nil {
				out.Reject(perr)
				return
			}
		}
		out.Resolve(values)
	}
	if left == 0 {
		go finish()
		return out
	}
	err := watch(members, func(int) {
		mu.Lock()
		left--
		last := left == 0
		mu.Unlock()
		if last {
			finish()
		}
	})
	if err != nil {
		out.Reject(err)
	}
	return out
}

func guard(fn func()) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", promise.ErrPanic, p)
		}
	}()
	fn()
	return nil
}

// String lists the member ids.
func (s *ResultSet) String() string {
	ids := make([]string, 0, s.Len())
	for _, r := range s.Results() {
		ids = append(ids, r.id)
	}
	return "<ResultSet: [" + strings.Join(ids, ", ") + "]>"
}

// GroupResult is the result of a Celery group: a ResultSet with the group's
// id and, when the group is the last step of a chain, a parent. Its methods
// are ResultSet's plus ID, Parent, Children and AsTuple.
type GroupResult struct {
	*ResultSet
	id     string
	parent *AsyncResult
}

// NewGroupResult returns the result of group id with the given members.
// parent may be nil.
func NewGroupResult(id string, parent *AsyncResult, results ...*AsyncResult) *GroupResult {
	return &GroupResult{ResultSet: NewResultSet(results...), id: id, parent: parent}
}

// ID returns the group id.
func (g *GroupResult) ID() string { return g.id }

// String returns the group id, as Celery labels groups in graphs.
func (g *GroupResult) String() string { return g.id }

// Parent returns the chain step before the group, or nil.
func (g *GroupResult) Parent() *AsyncResult { return g.parent }

// Children returns the members (Celery's GroupResult.children).
func (g *GroupResult) Children() []Result {
	rs := g.Results()
	out := make([]Result, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

// AsTuple returns Celery's as_tuple form: ((id, parent tuple), [member
// tuples]).
func (g *GroupResult) AsTuple() Tuple {
	t := Tuple{ID: g.id, Group: true}
	if g.parent != nil {
		p := g.parent.AsTuple()
		t.Parent = &p
	}
	rs := g.Results()
	t.Nodes = make([]Tuple, len(rs))
	for i, r := range rs {
		t.Nodes[i] = r.AsTuple()
	}
	return t
}
