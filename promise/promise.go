package promise

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrPanic wraps a panic recovered from a callback. The promise returned by
// the registration that panicked is rejected with an error that satisfies
// errors.Is(err, ErrPanic).
var ErrPanic = errors.New("promise: callback panicked")

// Promise is a value of type T that becomes available later, or an error.
// It settles exactly once; later Resolve or Reject calls are ignored and
// report false. The zero value is not usable: create one with New, Resolved
// or Rejected. A Promise is safe for concurrent use.
type Promise[T any] struct {
	mu      sync.Mutex
	done    chan struct{}
	settled bool
	val     T
	err     error

	// queue holds callbacks waiting to run; running is true while the
	// dispatcher goroutine drains it.
	queue   []*callback
	running bool
}

type callback struct {
	fn      func()
	dropped bool // set under the owning promise's mu when a ThenContext ctx ends
}

// New returns a pending promise.
func New[T any]() *Promise[T] {
	return &Promise[T]{done: make(chan struct{})}
}

// Resolved returns a promise already settled with v.
func Resolved[T any](v T) *Promise[T] {
	p := New[T]()
	p.Resolve(v)
	return p
}

// Rejected returns a promise already settled with err.
func Rejected[T any](err error) *Promise[T] {
	p := New[T]()
	p.Reject(err)
	return p
}

// Resolve settles the promise with v. It reports whether this call settled
// it; it returns false if the promise had already settled.
func (p *Promise[T]) Resolve(v T) bool { return p.settle(v, nil) }

// Reject settles the promise with err. A nil err is replaced by an error
// saying so, so that a rejected promise always carries a non-nil error. It
// reports whether this call settled the promise.
func (p *Promise[T]) Reject(err error) bool {
	if err == nil {
		err = errors.New("promise: rejected with a nil error")
	}
	var zero T
	return p.settle(zero, err)
}

// Settle settles the promise with v when err is nil and with err otherwise.
func (p *Promise[T]) Settle(v T, err error) bool {
	if err != nil {
		var zero T
		return p.settle(zero, err)
	}
	return p.settle(v, nil)
}

func (p *Promise[T]) settle(v T, err error) bool {
	p.mu.Lock()
	if p.settled {
		p.mu.Unlock()
		return false
	}
	p.settled = true
	p.val, p.err = v, err
	close(p.done)
	start := len(p.queue) > 0 && !p.running
	if start {
		p.running = true
	}
	p.mu.Unlock()
	if start {
		go p.dispatch()
	}
	return true
}

// Done returns a channel that is closed when the promise settles.
func (p *Promise[T]) Done() <-chan struct{} { return p.done }

// Settled reports whether the promise has settled.
func (p *Promise[T]) Settled() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Peek returns the outcome without blocking. settled is false while the
// promise is pending, and v and err are then zero.
func (p *Promise[T]) Peek() (v T, settled bool, err error) {
	select {
	case <-p.done:
		return p.val, true, p.err
	default:
		var zero T
		return zero, false, nil
	}
}

// Wait blocks until the promise settles or ctx ends, whichever comes first.
// When ctx ends first it returns ctx's error (wrapped with context.Cause
// when one is set); the promise itself is not affected.
func (p *Promise[T]) Wait(ctx context.Context) (T, error) {
	select {
	case <-p.done:
		return p.val, p.err
	default:
	}
	select {
	case <-p.done:
		return p.val, p.err
	case <-ctx.Done():
		var zero T
		if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
			return zero, fmt.Errorf("%w: %w", ctx.Err(), cause)
		}
		return zero, ctx.Err()
	}
}

// enqueue adds a callback and starts the dispatcher if the promise has
// settled and no dispatcher is running.
func (p *Promise[T]) enqueue(cb *callback) {
	p.mu.Lock()
	p.queue = append(p.queue, cb)
	start := p.settled && !p.running
	if start {
		p.running = true
	}
	p.mu.Unlock()
	if start {
		go p.dispatch()
	}
}

// dispatch runs queued callbacks one at a time, in order, until the queue is
// empty. Only one dispatcher runs per promise at a time.
func (p *Promise[T]) dispatch() {
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.running = false
			p.queue = nil
			p.mu.Unlock()
			return
		}
		cb := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		dropped := cb.dropped
		p.mu.Unlock()
		if !dropped {
			cb.fn()
		}
	}
}

// OnSettle registers fn to run with the outcome once the promise settles. It
// returns nothing and creates no derived promise; it is the cheapest way to
// observe a promise.
func (p *Promise[T]) OnSettle(fn func(v T, err error)) {
	p.enqueue(&callback{fn: func() { fn(p.val, p.err) }})
}

// Then registers onValue to run when the promise resolves. The returned
// promise settles with onValue's outcome, or with this promise's error if it
// is rejected (onValue then does not run).
func (p *Promise[T]) Then(onValue func(T) (T, error)) *Promise[T] {
	return Map(p, onValue)
}

// Catch registers onError to run when the promise is rejected. The returned
// promise settles with onError's outcome, or with this promise's value if it
// resolves (onError then does not run).
func (p *Promise[T]) Catch(onError func(error) (T, error)) *Promise[T] {
	next := New[T]()
	p.enqueue(&callback{fn: func() {
		if p.err == nil {
			next.Resolve(p.val)
			return
		}
		runGuarded(next, func() (T, error) { return onError(p.err) })
	}})
	return next
}

// Finally registers fn to run once the promise settles, whatever the
// outcome. The returned promise settles with this promise's outcome after
// fn has run.
func (p *Promise[T]) Finally(fn func()) *Promise[T] {
	next := New[T]()
	p.enqueue(&callback{fn: func() {
		defer func() {
			if r := recover(); r != nil {
				next.Reject(fmt.Errorf("%w: %v", ErrPanic, r))
			}
		}()
		fn()
		next.Settle(p.val, p.err)
	}})
	return next
}

// ThenContext is Then bound to ctx. If ctx ends before onValue has started,
// onValue is dropped (the promise no longer references it, so it can be
// collected) and the returned promise is rejected with ctx's error. This is
// the Go form of Celery's weak callbacks.
func (p *Promise[T]) ThenContext(ctx context.Context, onValue func(T) (T, error)) *Promise[T] {
	next := New[T]()
	if err := ctx.Err(); err != nil {
		next.Reject(err)
		return next
	}
	cb := &callback{}
	var fnMu sync.Mutex
	fn := onValue
	cb.fn = func() {
		fnMu.Lock()
		f := fn
		fnMu.Unlock()
		if f == nil {
			return
		}
		if p.err != nil {
			next.Reject(p.err)
			return
		}
		runGuarded(next, func() (T, error) { return f(p.val) })
	}
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		cb.dropped = true
		p.mu.Unlock()
		fnMu.Lock()
		fn = nil
		fnMu.Unlock()
		next.Reject(ctx.Err())
	})
	p.enqueue(cb)
	// Once the callback has run (or been dropped), release the AfterFunc.
	next.OnSettle(func(T, error) { stop() })
	return next
}

// Map registers f to run when p resolves and returns a promise for f's
// outcome, of another type. A rejection of p passes through unchanged.
func Map[T, U any](p *Promise[T], f func(T) (U, error)) *Promise[U] {
	next := New[U]()
	p.enqueue(&callback{fn: func() {
		if p.err != nil {
			next.Reject(p.err)
			return
		}
		runGuarded(next, func() (U, error) { return f(p.val) })
	}})
	return next
}

// runGuarded runs f and settles next with its outcome; a panic in f rejects
// next with ErrPanic instead of crashing the dispatcher.
func runGuarded[U any](next *Promise[U], f func() (U, error)) {
	defer func() {
		if r := recover(); r != nil {
			next.Reject(fmt.Errorf("%w: %v", ErrPanic, r))
		}
	}()
	v, err := f()
	next.Settle(v, err)
}

// All returns a promise that resolves with every value, in the order of ps,
// once all of them have resolved, or is rejected with the first error to
// arrive.
func All[T any](ps ...*Promise[T]) *Promise[[]T] {
	out := New[[]T]()
	if len(ps) == 0 {
		out.Resolve([]T{})
		return out
	}
	vals := make([]T, len(ps))
	var mu sync.Mutex
	left := len(ps)
	for i, p := range ps {
		p.OnSettle(func(v T, err error) {
			if err != nil {
				out.Reject(err)
				return
			}
			mu.Lock()
			vals[i] = v
			left--
			last := left == 0
			mu.Unlock()
			if last {
				out.Resolve(vals)
			}
		})
	}
	return out
}
