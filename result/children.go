package result

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"
)

// ErrForeignReplyQueue is satisfied by the error a wait on a child result
// ends with when no state for it ever arrived and this client did not send
// it: most likely a subtask started inside a task body, whose results go to
// the worker's own reply queue.
var ErrForeignReplyQueue = errors.New("stalk: the task's results go to a reply queue this client does not consume")

// Children returns the results the task reported creating, decoded from
// the children field of its latest result message: subtasks it started,
// the next step of its chain, groups (as *GroupResult). It is nil before
// any message arrived. Once the task is ready the list is fixed and the
// same values are returned on every call.
//
// A subtask started inside a task body (add.delay() in a Celery task)
// replies to the worker's own reply queue, not to this client's: Celery's
// rpc backend gives it the worker's reply_to. Its id is known here, but
// its states never arrive. Waiting on it ends only with ctx, with an error
// that satisfies ErrForeignReplyQueue (and ErrTimeout for a deadline).
// Children that are steps this client sent (a chain's next step) do
// arrive.
func (r *AsyncResult) Children() []Result {
	r.mu.Lock()
	if r.children != nil {
		defer r.mu.Unlock()
		return r.children
	}
	r.mu.Unlock()
	m := r.latest()
	if m == nil {
		return nil
	}
	out := make([]Result, 0, len(m.Children))
	for _, raw := range m.Children {
		c, err := FromTuple(raw, r.backend, WithApp(r.app), withChildOf(r.id))
		if err != nil {
			continue // a form the rpc backend cannot follow; see FromTuple
		}
		out = append(out, c)
	}
	if !m.Status.Ready() {
		return out
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.children == nil {
		r.children = out
	}
	return r.children
}

// withChildOf marks a result created from parent's children list.
func withChildOf(parent string) Option { return func(r *AsyncResult) { r.childOf = parent } }

// foreignChildError explains why a child result never arrived.
type foreignChildError struct {
	id, parent string
	err        error // the timeout or cancellation
}

func (e *foreignChildError) Error() string {
	return fmt.Sprintf("stalk: no state arrived for task %s, a child of task %s that this client did not send: "+
		"a task started inside another task's body gets the worker's own reply_to, so Celery's rpc backend "+
		"sends its results to the worker's reply queue, which stalk does not consume (%v)", e.id, e.parent, e.err)
}

func (e *foreignChildError) Is(target error) bool { return target == ErrForeignReplyQueue }
func (e *foreignChildError) Unwrap() error        { return e.err }

// foreignChildErr returns the error a wait that ended with ctx reports, if
// r is a child this client did not send and nothing ever arrived for it;
// otherwise nil. base is the error the wait would return.
func (r *AsyncResult) foreignChildErr(e *Entry, base error) error {
	if r.childOf == "" || e == nil || e.Latest() != nil {
		return nil
	}
	if _, sent := e.SendInfo(); sent {
		return nil
	}
	return &foreignChildError{id: r.id, parent: r.childOf, err: base}
}

// Dep is one node of a walk over a task graph: the node, the node it was
// reached from (nil for the root), and, for Collect, its value.
type Dep struct {
	Parent Result
	Node   Result
	Value  any
}

// IterDeps walks the graph below r breadth first (Celery's iterdeps):
// r, then each ready node's children. It does not wait: when it meets a
// node that is not ready it yields (Dep{Node: n}, err) with err wrapping
// ErrIncompleteStream and stops, unless intermediate is true, in which case
// it yields the node and does not descend into it. ctx is checked between
// nodes.
func (r *AsyncResult) IterDeps(ctx context.Context, intermediate bool) iter.Seq2[Dep, error] {
	return iterDeps(ctx, r, intermediate, false, nil)
}

// Collect walks the graph below r like IterDeps, but waits for each node
// with Get(ctx, opts...) before descending, and yields it with its value
// (Celery's collect). A failed node ends the walk with its error, unless
// Propagate(false) is given. A node whose Get returns without the node
// being ready (a result sent with ignore_result) yields ErrIncompleteStream
// unless intermediate is true.
func (r *AsyncResult) Collect(ctx context.Context, intermediate bool, opts ...GetOption) iter.Seq2[Dep, error] {
	return iterDeps(ctx, r, intermediate, true, opts)
}

func iterDeps(ctx context.Context, root Result, intermediate, collect bool, opts []GetOption) iter.Seq2[Dep, error] {
	return func(yield func(Dep, error) bool) {
		queue := []Dep{{Node: root}}
		for len(queue) > 0 {
			d := queue[0]
			queue = queue[1:]
			if err := ctx.Err(); err != nil {
				yield(d, fmt.Errorf("stalk: walking the task graph: %w", err))
				return
			}
			if collect {
				v, err := d.Node.Get(ctx, opts...)
				if err != nil {
					yield(d, err)
					return
				}
				d.Value = v
			}
			ready := d.Node.Ready()
			if !ready && !intermediate {
				yield(d, fmt.Errorf("%w: task %s", ErrIncompleteStream, d.Node.ID()))
				return
			}
			if !yield(d, nil) {
				return
			}
			if ready {
				for _, c := range d.Node.Children() {
					queue = append(queue, Dep{Parent: d.Node, Node: c})
				}
			}
		}
	}
}

// GetLeaf waits for every node of the graph below r, as Collect does, and
// returns the value of the last one (Celery's get_leaf).
func (r *AsyncResult) GetLeaf(ctx context.Context, opts ...GetOption) (any, error) {
	var v any
	for d, err := range r.Collect(ctx, false, opts...) {
		if err != nil {
			return nil, err
		}
		v = d.Value
	}
	return v, nil
}

// ancestorGrace bounds how long Get waits for an ancestor's state after
// the task itself failed.
const ancestorGrace = time.Second

// failedAncestor implements Celery's follow_parents when the task itself
// ended in FAILURE or REVOKED: a chain step after a failed one is marked
// failed by the worker too, with the same exception, so the error that
// explains the failure is the first failed ancestor's, root first. An
// ancestor whose final state has not arrived yet (in per-task mode it comes
// on another queue) is waited for briefly: in a chain, a step only fails
// after its parent has finished. It returns nil when no ancestor failed.
func (r *AsyncResult) failedAncestor(ctx context.Context, cfg getConfig, m *Meta, err error) error {
	if err != nil || m == nil || !m.Status.Propagates() || !cfg.followParents || !cfg.propagate || r.parent == nil {
		return nil
	}
	var ancestors []*AsyncResult
	for p := r.parent; p != nil; p = p.parent {
		ancestors = append(ancestors, p)
	}
	ctx, cancel := context.WithTimeout(ctx, ancestorGrace)
	defer cancel()
	for i := len(ancestors) - 1; i >= 0; i-- {
		e := ancestors[i].Entry()
		if e == nil {
			continue
		}
		am, aerr := e.Promise().Wait(ctx)
		if aerr != nil {
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		if am.Status.Propagates() {
			return am.Err()
		}
	}
	return nil
}
