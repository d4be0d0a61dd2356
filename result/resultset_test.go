package result

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func members(b *fakeBackend, n int) []*AsyncResult {
	out := make([]*AsyncResult, n)
	for i := range out {
		out[i] = New(fmt.Sprintf("t%d", i), b)
	}
	return out
}

func TestResultSetMembership(t *testing.T) {
	b := newFake()
	rs := members(b, 3)
	s := NewResultSet(rs[0], rs[1], rs[0])
	assert.Equal(t, 2, s.Len(), "no duplicates")
	s.Add(New("t1", b))
	assert.Equal(t, 2, s.Len(), "duplicates are by id")
	s.Update(rs[2])
	assert.Equal(t, []*AsyncResult{rs[0], rs[1], rs[2]}, s.Results())
	require.NoError(t, s.Remove(rs[1]))
	assert.ErrorIs(t, s.Remove(rs[1]), ErrNotMember)
	s.Discard(rs[1]) // absent: no error
	s.Discard(rs[0])
	assert.Equal(t, []*AsyncResult{rs[2]}, s.Results())
	s.Clear()
	assert.Equal(t, 0, s.Len())
	assert.True(t, s.Ready(), "an empty set is ready")
}

func TestResultSetStates(t *testing.T) {
	b := newFake()
	rs := members(b, 3)
	s := NewResultSet(rs...)
	assert.True(t, s.Waiting())
	assert.False(t, s.Ready())
	b.deliver("t0", Success, int64(1))
	b.deliver("t1", Started, nil)
	assert.Equal(t, 1, s.CompletedCount())
	assert.False(t, s.Failed())
	b.deliver("t1", Failure, failure("x"))
	b.deliver("t2", Revoked, nil)
	assert.True(t, s.Ready())
	assert.False(t, s.Waiting())
	assert.True(t, s.Failed())
	assert.False(t, s.Successful())
	assert.Equal(t, 1, s.CompletedCount(), "completed_count counts successes")
	var te *TaskError
	require.ErrorAs(t, s.MaybeThrow(), &te)
	assert.Equal(t, "t1", te.TaskID)
}

func TestJoinOrderAndPropagate(t *testing.T) {
	b := newFake()
	rs := members(b, 4)
	s := NewResultSet(rs...)
	go func() {
		// Arrive out of order, one failing.
		for _, i := range []int{3, 1, 0, 2} {
			if i == 2 {
				b.deliver("t2", Failure, failure("bad"))
				continue
			}
			b.deliver(fmt.Sprintf("t%d", i), Success, int64(i*10))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var order []string
	var mu sync.Mutex
	vals, err := s.Join(ctx, Propagate(false), Callback(func(id string, _ any) {
		mu.Lock()
		order = append(order, id)
		mu.Unlock()
	}))
	require.NoError(t, err)
	require.Len(t, vals, 4)
	assert.Equal(t, int64(0), vals[0])
	assert.Equal(t, int64(10), vals[1])
	assert.Equal(t, int64(30), vals[3])
	var te *TaskError
	require.ErrorAs(t, vals[2].(error), &te)
	assert.Len(t, order, 4)

	_, err = s.Join(ctx)
	require.ErrorAs(t, err, &te, "propagate is the default")
	assert.Equal(t, "t2", te.TaskID)
	v, err := s.Get(ctx, Propagate(false))
	require.NoError(t, err)
	assert.Len(t, v, 4)
}

func TestJoinPropagatesFirstFailureEarly(t *testing.T) {
	b := newFake()
	s := NewResultSet(members(b, 3)...)
	b.deliver("t1", Failure, failure("early"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.Join(ctx)
	assert.ErrorIs(t, err, ErrTaskFailed, "does not wait for the others")
}

func TestJoinTimeout(t *testing.T) {
	b := newFake()
	s := NewResultSet(members(b, 3)...)
	b.deliver("t0", Success, int64(1))
	_, err := s.Join(context.Background(), Timeout(30*time.Millisecond))
	assert.ErrorIs(t, err, ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "2 not ready")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = s.Join(ctx)
	assert.ErrorIs(t, err, context.Canceled)
	_, err = s.Join(context.Background(), OnMessage(func(Meta) {}))
	assert.Error(t, err)
}

func TestJoinTransportError(t *testing.T) {
	b := newFake()
	rs := members(b, 2)
	s := NewResultSet(rs...)
	b.deliver("t0", Success, int64(1))
	b.Attach("t1").Fail(ErrClosed)
	_, err := s.Join(context.Background(), Propagate(false))
	assert.ErrorIs(t, err, ErrClosed)
}

func TestIterCompletionOrder(t *testing.T) {
	b := newFake()
	s := NewResultSet(members(b, 5)...)
	arrival := []int{4, 2, 0, 3, 1}
	go func() {
		for _, i := range arrival {
			if i == 3 {
				b.deliver("t3", Failure, failure("x"))
			} else {
				b.deliver(fmt.Sprintf("t%d", i), Success, int64(i))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []string
	for r, err := range s.Iter(ctx) {
		require.NotNil(t, r)
		if r.ID() == "t3" {
			assert.ErrorIs(t, err, ErrTaskFailed)
		} else {
			assert.NoError(t, err)
		}
		got = append(got, r.ID())
	}
	assert.Equal(t, []string{"t4", "t2", "t0", "t3", "t1"}, got)
}

func TestIterStopsAtCtx(t *testing.T) {
	b := newFake()
	s := NewResultSet(members(b, 2)...)
	b.deliver("t1", Success, int64(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	var n int
	var last error
	for r, err := range s.Iter(ctx) {
		n++
		if r == nil {
			last = err
		}
	}
	assert.Equal(t, 2, n)
	assert.ErrorIs(t, last, ErrTimeout)

	// Breaking early is fine.
	for range s.Iter(context.Background()) {
		break
	}
}

func TestThen(t *testing.T) {
	b := newFake()
	s := NewResultSet(members(b, 3)...)
	got := make(chan []any, 1)
	p := s.Then(func(v []any) { got <- v }, func(err error) { t.Errorf("onError: %v", err) })
	for i := 2; i >= 0; i-- {
		assert.False(t, p.Settled())
		b.deliver(fmt.Sprintf("t%d", i), Success, int64(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := p.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, []any{int64(0), int64(1), int64(2)}, v)
	assert.Equal(t, v, <-got)

	b2 := newFake()
	s2 := NewResultSet(members(b2, 2)...)
	errs := make(chan error, 1)
	p2 := s2.Then(nil, func(err error) { errs <- err })
	b2.deliver("t1", Failure, failure("x"))
	assert.False(t, p2.Settled(), "waits for every member")
	b2.deliver("t0", Success, int64(0))
	_, err = p2.Wait(ctx)
	assert.ErrorIs(t, err, ErrTaskFailed)
	assert.ErrorIs(t, <-errs, ErrTaskFailed)

	empty := NewResultSet().Then(nil, nil)
	v, err = empty.Wait(ctx)
	require.NoError(t, err)
	assert.Empty(t, v)
}

func TestJoinTenThousand(t *testing.T) {
	b := newFake()
	rs := members(b, 10000)
	s := NewResultSet(rs...)
	go func() {
		for i := len(rs) - 1; i >= 0; i-- {
			b.deliver(rs[i].ID(), Success, int64(i))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vals, err := s.Join(ctx)
	require.NoError(t, err)
	require.Len(t, vals, 10000)
	for i, v := range vals {
		if v != int64(i) {
			t.Fatalf("value %d = %v", i, v)
		}
	}
}

func TestResultSetForgetRevoke(t *testing.T) {
	b := newFake()
	s := NewResultSet(members(b, 2)...)
	require.NoError(t, s.Forget(context.Background()))
	assert.Equal(t, []string{"t0", "t1"}, b.forgot)
	_, err := s.Revoke(context.Background())
	assert.Error(t, err, "the fake backend cannot revoke")
	assert.False(t, errors.Is(err, ErrNotSupported))
}

func TestGroupResult(t *testing.T) {
	b := newFake()
	parent := New("p", b)
	g := NewGroupResult("g", parent, members(b, 2)...)
	assert.Equal(t, "g", g.ID())
	assert.Equal(t, "g", g.String())
	assert.Same(t, parent, g.Parent())
	assert.Equal(t, `[["g",[["p",null],null]],[[["t0",null],null],[["t1",null],null]]]`, g.AsTuple().String())
	var r Result = g
	assert.Len(t, r.Children(), 2)
}

func TestAsyncResultThenContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b := newFake()

	// ctx live: onValue runs and the returned promise has the value.
	got := make(chan any, 1)
	p := New("a", b).ThenContext(ctx, func(v any) { got <- v }, func(err error) { t.Errorf("onError: %v", err) })
	b.deliver("a", Success, int64(7))
	v, err := p.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(7), v)
	assert.Equal(t, int64(7), <-got)

	// A failure goes to onError as a *TaskError.
	errs := make(chan error, 1)
	p = New("f", b).ThenContext(ctx, func(any) { t.Error("onValue after FAILURE") }, func(err error) { errs <- err })
	b.deliver("f", Failure, failure("bad"))
	_, err = p.Wait(ctx)
	require.ErrorIs(t, err, ErrTaskFailed)
	var te *TaskError
	require.ErrorAs(t, <-errs, &te)
	assert.Equal(t, "ValueError", te.Type)

	// ctx ended first: the callbacks are dropped and the promise is
	// rejected with ctx's error; the later result does not call them.
	short, stop := context.WithCancel(ctx)
	var called atomic.Bool
	p = New("late", b).ThenContext(short, func(any) { called.Store(true) }, func(error) { called.Store(true) })
	stop()
	_, err = p.Wait(ctx)
	require.ErrorIs(t, err, context.Canceled)
	b.deliver("late", Success, int64(1))
	_, err = New("late", b).Get(ctx)
	require.NoError(t, err)
	time.Sleep(20 * time.Millisecond)
	assert.False(t, called.Load(), "a dropped callback ran")

	// No backend.
	_, err = New("x", nil).ThenContext(ctx, nil, nil).Wait(ctx)
	assert.ErrorIs(t, err, ErrNoBackend)
}

type releasingFake struct {
	*fakeBackend
	released []string
}

func (f *releasingFake) Release(id string) { f.released = append(f.released, id) }

func TestAsyncResultRelease(t *testing.T) {
	err := New("a", newFake()).Release()
	require.Error(t, err, "a backend without Release")
	assert.Contains(t, err.Error(), "cannot release")
	assert.ErrorIs(t, New("", newFake()).Release(), ErrEmptyID)
	rf := &releasingFake{fakeBackend: newFake()}
	require.NoError(t, New("b", rf).Release())
	assert.Equal(t, []string{"b"}, rf.released)
}

// Members that are ready before the iteration starts come in the order the
// worker finished them (date_done), and without a goroutine each.
func TestIterReadyMembersByDateDone(t *testing.T) {
	b := newFake()
	rs := members(b, 4)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, dt := range []int{3, 1, 2} { // member 3 stays pending
		b.Attach(rs[i].ID()).Deliver(&Meta{TaskID: rs[i].ID(), Status: Success, Result: int64(i), DateDone: base.Add(time.Duration(dt) * time.Second)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var order []string
	for r, err := range NewResultSet(rs...).Iter(ctx) {
		require.NoError(t, err)
		order = append(order, r.ID())
		if len(order) == 3 {
			b.deliver(rs[3].ID(), Success, int64(3))
		}
	}
	assert.Equal(t, []string{"t1", "t2", "t0", "t3"}, order)
}
