package promise

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSettlesExactlyOnce(t *testing.T) {
	p := New[int]()
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				if p.Resolve(i) {
					wins.Add(1)
				}
			} else if p.Reject(errors.New("x")) {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	assert.EqualValues(t, 1, wins.Load())
	assert.True(t, p.Settled())
	v1, ok, e1 := p.Peek()
	require.True(t, ok)
	v2, e2 := p.Wait(context.Background())
	assert.Equal(t, v1, v2)
	assert.Equal(t, e1, e2)
	assert.False(t, p.Resolve(1000))
}

func TestPeekPending(t *testing.T) {
	p := New[string]()
	v, ok, err := p.Peek()
	assert.False(t, ok)
	assert.Empty(t, v)
	assert.NoError(t, err)
	select {
	case <-p.Done():
		t.Fatal("Done closed while pending")
	default:
	}
}

func TestRejectNilError(t *testing.T) {
	p := New[int]()
	p.Reject(nil)
	_, err := p.Wait(context.Background())
	assert.Error(t, err)
}

func TestWaitContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New[int]()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		_, err := p.Wait(ctx)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, time.Second, time.Since(start))
		assert.False(t, p.Settled(), "ctx does not settle the promise")

		go func() {
			time.Sleep(5 * time.Second)
			p.Resolve(7)
		}()
		v, err := p.Wait(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 7, v)
	})
}

func TestCallbacksInRegistrationOrderOffSettlingGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New[int]()
		var mu sync.Mutex
		var order []int
		settler := make(chan struct{})
		for i := 0; i < 10; i++ {
			p.OnSettle(func(v int, err error) {
				<-settler // would deadlock if run on the settling goroutine
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
			})
		}
		p.Resolve(1)
		close(settler)
		synctest.Wait()
		// Registered after settling: still after the others.
		done := make(chan struct{})
		p.OnSettle(func(int, error) {
			mu.Lock()
			order = append(order, 10)
			mu.Unlock()
			close(done)
		})
		<-done
		assert.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, order)
	})
}

func TestThenCatchMap(t *testing.T) {
	ctx := context.Background()
	p := New[int]()
	doubled := p.Then(func(v int) (int, error) { return v * 2, nil })
	str := Map(doubled, func(v int) (string, error) {
		if v != 42 {
			return "", errors.New("wrong")
		}
		return "forty-two", nil
	})
	notCalled := p.Catch(func(error) (int, error) { t.Error("catch on success"); return 0, nil })
	p.Resolve(21)
	s, err := str.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, "forty-two", s)
	v, err := notCalled.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, 21, v)

	boom := errors.New("boom")
	q := Rejected[int](boom)
	skipped := q.Then(func(int) (int, error) { t.Error("then on rejection"); return 0, nil })
	_, err = skipped.Wait(ctx)
	assert.ErrorIs(t, err, boom)
	recovered := q.Catch(func(err error) (int, error) { return 5, nil })
	v, err = recovered.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, 5, v)
	var ran bool
	fin := q.Finally(func() { ran = true })
	_, err = fin.Wait(ctx)
	assert.ErrorIs(t, err, boom)
	assert.True(t, ran)
}

func TestCallbackPanicRejectsDerived(t *testing.T) {
	p := Resolved(1)
	d := p.Then(func(int) (int, error) { panic("bad callback") })
	_, err := d.Wait(context.Background())
	assert.ErrorIs(t, err, ErrPanic)
	// The dispatcher survived: later callbacks still run.
	v, err := p.Then(func(v int) (int, error) { return v + 1, nil }).Wait(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, v)
}

func TestThenContextDropsCallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := New[int]()
		ctx, cancel := context.WithCancel(context.Background())
		var called atomic.Bool
		d := p.ThenContext(ctx, func(v int) (int, error) { called.Store(true); return v, nil })
		cancel()
		_, err := d.Wait(context.Background())
		assert.ErrorIs(t, err, context.Canceled)
		p.Resolve(1)
		synctest.Wait()
		assert.False(t, called.Load(), "dropped callback must not run")

		// Not cancelled: it runs.
		q := New[int]()
		d2 := q.ThenContext(context.Background(), func(v int) (int, error) { return v * 3, nil })
		q.Resolve(2)
		v, err := d2.Wait(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 6, v)
	})
}

func TestThenContextReleasesCallback(t *testing.T) {
	p := New[int]()
	ctx, cancel := context.WithCancel(context.Background())
	finalized := make(chan struct{})
	// The callback holds the only reference to a 64 MiB buffer; the
	// buffer's finalizer tells when the callback was let go.
	func() {
		big := make([]byte, 64<<20)
		runtime.SetFinalizer(&big[0], func(*byte) { close(finalized) })
		p.ThenContext(ctx, func(v int) (int, error) { return v + len(big), nil })
	}()
	// While ctx lives, the promise keeps the callback.
	for range 5 {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-finalized:
		t.Fatal("callback collected while its ctx was live")
	default:
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		select {
		case <-finalized:
			runtime.KeepAlive(p) // the promise itself is still reachable
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("callback still reachable after its ctx ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAll(t *testing.T) {
	ctx := context.Background()
	a, b := New[int](), New[int]()
	all := All(a, b)
	b.Resolve(2)
	a.Resolve(1)
	vs, err := all.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, []int{1, 2}, vs)
	c := New[int]()
	boom := errors.New("boom")
	failed := All(c, Rejected[int](boom))
	_, err = failed.Wait(ctx)
	assert.ErrorIs(t, err, boom)
	empty, err := All[int]().Wait(ctx)
	require.NoError(t, err)
	assert.Empty(t, empty)
}
