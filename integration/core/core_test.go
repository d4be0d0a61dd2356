package core

import (
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

func TestSendSuccess(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3))
		require.NoError(t, err)
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(5), v)
		assert.Equal(t, result.Success, r.State())
		assert.True(t, r.Ready())
		assert.True(t, r.Successful())
		assert.False(t, r.Failed())
		assert.Equal(t, "tasks.add", r.Name())
		assert.Equal(t, []any{2, 3}, r.Args())
		assert.Equal(t, queue, r.Queue())
		assert.Equal(t, worker.Hostname, r.Worker(), "worker learnt from STARTED")
		assert.False(t, r.DateDone().IsZero())
		n, err := result.GetAs[int](ctx, r)
		require.NoError(t, err)
		assert.Equal(t, 5, n)
	})
}

func TestSendFailureDecoded(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.boom", amqp.Args("bad input"))
		require.NoError(t, err)
		_, err = r.Get(ctx)
		var te *result.TaskError
		require.ErrorAs(t, err, &te)
		assert.Equal(t, "ValueError", te.Type)
		assert.Equal(t, "builtins", te.Module)
		assert.Equal(t, []any{"bad input"}, te.Args)
		assert.Equal(t, "bad input", te.Message())
		assert.Contains(t, te.Traceback, "ValueError: bad input")
		assert.Contains(t, te.Traceback, "Traceback (most recent call last)")
		assert.Equal(t, r.ID(), te.TaskID)
		assert.True(t, errors.Is(err, result.ErrTaskFailed))
		assert.False(t, errors.Is(err, result.ErrRevoked))
		assert.True(t, r.Failed())
		assert.Equal(t, te.Traceback, r.Traceback())
		assert.Equal(t, te, r.MaybeThrow())

		// A custom exception with several args.
		r2, err := c.Send(ctx, "tasks.custom_fail", amqp.Args(42, "détail"))
		require.NoError(t, err)
		_, err = r2.Get(ctx)
		require.ErrorAs(t, err, &te)
		assert.Equal(t, "CustomError", te.Type)
		assert.Equal(t, "tasks", te.Module)
		assert.Equal(t, []any{int64(42), "détail"}, te.Args)
		assert.Equal(t, "tasks.CustomError", te.QualifiedType())
	})
}

func TestSendPropagateFalse(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.boom", amqp.Args("quiet"))
		require.NoError(t, err)
		v, err := r.Get(ctx, result.Propagate(false))
		require.NoError(t, err)
		te, ok := v.(*result.TaskError)
		require.True(t, ok, "value is the *TaskError, got %T", v)
		assert.Equal(t, "ValueError", te.Type)
	})
}

func TestSendProgressOnMessage(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.progress", amqp.Args(4, 0.05))
		require.NoError(t, err)
		var states []result.State
		var currents []int64
		v, err := r.Get(ctx, result.OnMessage(func(m result.Meta) {
			states = append(states, m.Status)
			if m.Status == "PROGRESS" {
				currents = append(currents, m.Result.(map[string]any)["current"].(int64))
			}
		}))
		require.NoError(t, err)
		assert.Equal(t, int64(4), v)
		assert.Equal(t, []result.State{"STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"}, states)
		assert.Equal(t, []int64{0, 1, 2, 3}, currents)
	})
}

func TestSendRetry(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.flaky", amqp.Args(2))
		require.NoError(t, err)
		var retries int
		v, err := r.Get(ctx, result.OnMessage(func(m result.Meta) {
			if m.Status == result.Retry {
				retries++
				assert.Equal(t, "RuntimeError", m.Err().Type)
			}
		}))
		require.NoError(t, err)
		assert.Equal(t, "ok after 2", v)
		assert.Equal(t, 2, retries)
		assert.Equal(t, 2, r.Retries())
	})
}

func TestSendIgnoreResult(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		// tasks.touch writes a file: the test sees that the task ran
		// although no result comes back for it.
		path := filepath.Join(t.TempDir(), "ran")
		token := uuid.NewString()
		r, err := c.Send(ctx, "tasks.touch", amqp.Args(path, token), amqp.IgnoreResult())
		require.NoError(t, err)
		assert.True(t, r.Ignored())
		assert.Equal(t, "tasks.touch", r.Name())
		assert.NotEmpty(t, r.Queue(), "what it was sent to")
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.Nil(t, v)
		require.Eventually(t, func() bool {
			b, err := os.ReadFile(path)
			return err == nil && string(b) == token
		}, 20*time.Second, 10*time.Millisecond, "the ignored task ran")
		// Nothing came back for it: a follow-up on the same queue completes
		// after it, and the ignored id has no state.
		r2, err := c.Send(ctx, "tasks.add", amqp.Args(1, 2))
		require.NoError(t, err)
		_, err = r2.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, result.Pending, c.AsyncResult(r.ID()).State())
	})
}

func TestSendKwargsNestedUnicode(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		kw := map[string]any{"name": "Zoë ✓ 東京", "nested": map[string]any{"list": []any{1, "two", 3.5, nil, true}}}
		r, err := c.Send(ctx, "tasks.echo", amqp.Args("a", 1), amqp.Kwargs(kw))
		require.NoError(t, err)
		assert.Equal(t, "tasks.echo", r.Name())
		assert.Equal(t, []any{"a", 1}, r.Args(), "what was sent")
		assert.Equal(t, kw, r.Kwargs(), "what was sent")
		var got struct {
			Args   []any          `json:"args"`
			Kwargs map[string]any `json:"kwargs"`
		}
		require.NoError(t, r.GetInto(ctx, &got))
		assert.Equal(t, []any{"a", float64(1)}, got.Args)
		assert.Equal(t, "Zoë ✓ 東京", got.Kwargs["name"])
		assert.Equal(t, map[string]any{"list": []any{float64(1), "two", 3.5, nil, true}}, got.Kwargs["nested"])

		// Large integers stay exact.
		rb, err := c.Send(ctx, "tasks.big")
		require.NoError(t, err)
		v, err := rb.Get(ctx)
		require.NoError(t, err)
		m := v.(map[string]any)
		want, _ := new(big.Int).SetString("1180591620717411303424", 10)
		assert.Equal(t, 0, want.Cmp(m["big"].(*big.Int)))
		assert.Equal(t, int64(9007199254740993), m["exact"])
		assert.Equal(t, 0.1, m["float"])
	})
}

func TestSendCountdownAndExpires(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		start := time.Now()
		r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 2), amqp.Countdown(1500*time.Millisecond))
		require.NoError(t, err)
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(3), v)
		assert.GreaterOrEqual(t, time.Since(start), 1400*time.Millisecond, "countdown honoured")

		// Expires that really expire: an eta after the expiry makes the
		// worker revoke it as expired when it comes due.
		// The expiry leaves the worker time to take the message from the
		// queue first: Expires also sets the AMQP expiration, as Celery
		// does, so the broker drops a message nobody consumed in time.
		r2, err := c.Send(ctx, "tasks.add", amqp.Args(1, 2), amqp.Countdown(5*time.Second), amqp.Expires(3*time.Second))
		require.NoError(t, err)
		_, err = r2.Get(ctx)
		require.ErrorIs(t, err, result.ErrRevoked)
		var te *result.TaskError
		require.ErrorAs(t, err, &te)
		assert.Equal(t, []any{"expired"}, te.Args)
	})
}

func TestSendContextTimeout(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.slow", amqp.Args(2))
		require.NoError(t, err)
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err = r.Get(short)
		require.ErrorIs(t, err, result.ErrTimeout)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		_, err = r.Get(ctx, result.Timeout(200*time.Millisecond))
		require.ErrorIs(t, err, result.ErrTimeout)
		// The result still arrives afterwards.
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(2), v)
	})
}

func TestSendThen(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.add", amqp.Args(20, 22))
		require.NoError(t, err)
		got := make(chan any, 1)
		p := r.Then(func(v any) { got <- v }, func(err error) { t.Errorf("onError: %v", err) })
		v, err := p.Wait(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(42), v)
		assert.Equal(t, int64(42), <-got)

		rf, err := c.Send(ctx, "tasks.boom", amqp.Args("then"))
		require.NoError(t, err)
		errs := make(chan error, 1)
		_, err = rf.Then(func(any) { t.Error("onValue on failure") }, func(err error) { errs <- err }).Wait(ctx)
		require.ErrorIs(t, err, result.ErrTaskFailed)
		require.ErrorIs(t, <-errs, result.ErrTaskFailed)
	})
}

func TestSendAttachByIDPerTask(t *testing.T) {
	ctx := harness.Ctx(t, 30*time.Second)
	a := dial(t)
	r, err := a.Send(ctx, "tasks.add", amqp.Args(7, 8))
	require.NoError(t, err)
	// Another client (another process, as far as the broker knows)
	// attaches by id while the task may still be running.
	b := dial(t)
	later := b.AsyncResult(r.ID())
	v, err := later.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(15), v)
	_, err = r.Get(ctx)
	require.NoError(t, err)

	// Two more clients read the same finished id: the final state stays in
	// its queue for every reader.
	for i := 0; i < 2; i++ {
		c := dial(t)
		v, err := c.AsyncResult(r.ID()).Get(ctx)
		require.NoError(t, err, "reader %d", i)
		assert.Equal(t, int64(15), v)
		// A reader holds the final state while it reads it and puts it
		// back; closing the reader, as a process that exits does, puts
		// it back for sure.
		require.NoError(t, c.Close())
	}
	ok, err := dial(t).AsyncResult(r.ID()).Exists(ctx)
	require.NoError(t, err)
	assert.True(t, ok)
}

func TestSendForgetAndExists(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 1))
		require.NoError(t, err)
		_, err = r.Get(ctx)
		require.NoError(t, err)
		ok, err := r.Exists(ctx)
		require.NoError(t, err)
		assert.True(t, ok)
		require.NoError(t, r.Forget(ctx))
		ok, err = c.AsyncResult(r.ID()).Exists(ctx)
		require.NoError(t, err)
		assert.False(t, ok, "forgotten")
		if c.ReplyMode() == amqp.PerTask {
			ok, err = dial(t).AsyncResult(r.ID()).Exists(ctx)
			require.NoError(t, err)
			assert.False(t, ok, "queue deleted for other processes too")
		}
		ok, err = c.AsyncResult("no-such-task-" + harness.RunID).Exists(ctx)
		require.NoError(t, err)
		assert.False(t, ok)
	})
}

func TestSendConcurrentGets(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 120*time.Second)
		const n = 1000
		rs := make([]*result.AsyncResult, n)
		var wg sync.WaitGroup
		sendErr := make(chan error, n)
		for i := range rs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := c.Send(ctx, "tasks.add", amqp.Args(i, 1))
				if err != nil {
					sendErr <- err
					return
				}
				rs[i] = r
			}()
		}
		wg.Wait()
		close(sendErr)
		for err := range sendErr {
			require.NoError(t, err)
		}
		errs := make([]error, n)
		vals := make([]any, n)
		for i := range rs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				vals[i], errs[i] = rs[i].Get(ctx)
			}()
		}
		wg.Wait()
		for i := range rs {
			require.NoError(t, errs[i], "task %d", i)
			require.Equal(t, int64(i+1), vals[i], "task %d", i)
		}
		st := c.Stats()
		assert.Equal(t, 0, st.Pending)
		assert.Zero(t, st.Malformed)
	})
}

func TestSendCloseRejectsPending(t *testing.T) {
	for _, m := range modes {
		t.Run(m.String(), func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			ctx := harness.Ctx(t, 30*time.Second)
			c := dial(t, amqp.WithReplyMode(m))
			r, err := c.Send(ctx, "tasks.slow", amqp.Args(5))
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() { _, err := r.Get(ctx); done <- err }()
			thenErr := make(chan error, 1)
			r.Then(nil, func(err error) { thenErr <- err })
			time.Sleep(100 * time.Millisecond)
			require.NoError(t, c.Close())
			require.NoError(t, c.Close(), "idempotent")
			require.ErrorIs(t, <-done, amqp.ErrClosed)
			require.ErrorIs(t, <-thenErr, amqp.ErrClosed)
			_, err = c.Send(ctx, "tasks.add", amqp.Args(1, 1))
			require.ErrorIs(t, err, amqp.ErrClosed)
		})
	}
}

func TestSendBadArguments(t *testing.T) {
	c := dial(t)
	ctx := harness.Ctx(t, 10*time.Second)
	_, err := c.Send(ctx, "")
	require.ErrorContains(t, err, "task name is empty")
	_, err = c.Send(ctx, "tasks.add", amqp.Countdown(-time.Second))
	require.ErrorContains(t, err, "negative countdown")
	_, err = c.Send(ctx, "tasks.add", amqp.Args(make(chan int)))
	require.ErrorContains(t, err, "cannot be encoded as JSON")
	_, err = c.Send(ctx, "tasks.add", amqp.Priority(300))
	require.ErrorContains(t, err, "priority")
	assert.Zero(t, c.Stats().Pending, "nothing registered for rejected sends")
}

// Attaching from a client configured with another result lifetime reads
// the existing queue instead of failing to redeclare it.
func TestSendAttachOtherLifetime(t *testing.T) {
	ctx := harness.Ctx(t, 30*time.Second)
	a := dial(t)
	r, err := a.Send(ctx, "tasks.add", amqp.Args(4, 4))
	require.NoError(t, err)
	_, err = r.Get(ctx)
	require.NoError(t, err)
	b := dial(t, amqp.WithResultExpires(3*time.Hour))
	v, err := b.AsyncResult(r.ID()).Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(8), v)
	assert.Zero(t, b.Stats().Reconnects, "no channel error, no reconnect")
	// A task nobody sent yet gets its queue declared, so a later result
	// is not dropped.
	id := "stalk-test-" + harness.RunID + "-future"
	fut := b.AsyncResult(id)
	_ = fut.State()
	require.Eventually(t, func() bool {
		ok, err := harness.Rabbitmqctl("list_queues", "name")
		return err == nil && strings.Contains(ok, b.ReplyQueue(id))
	}, 10*time.Second, 100*time.Millisecond)
	require.NoError(t, fut.Forget(ctx))
}

// With a stable shared reply queue name, a process that restarts gets back
// the results of tasks it sent before it stopped.
func TestSendStableReplyQueueAfterRestart(t *testing.T) {
	ctx := harness.Ctx(t, 30*time.Second)
	name := harness.Name("core-stable-reply")
	first := dial(t, amqp.WithReplyQueue(name))
	r, err := first.Send(ctx, "tasks.slow", amqp.Args(1))
	require.NoError(t, err)
	id := r.ID()
	require.NoError(t, first.Close()) // the process "dies" before the result arrives

	// The final state lands in the durable queue while no process
	// consumes it (STARTED too, unless it reached the first client before
	// it closed).
	require.Eventually(t, func() bool { return queueHoldsStatus(t, name, id, "SUCCESS") }, 20*time.Second, 50*time.Millisecond)
	second := dial(t, amqp.WithReplyQueue(name))
	v, err := second.AsyncResult(id).Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(1), v)
	assert.Equal(t, amqp.Shared, second.ReplyMode())
	assert.Equal(t, name, second.ReplyQueue(id))
}

// queueHoldsStatus reports whether queue holds a result message for id with
// status. It reads the messages without acknowledging them, and closing its
// channel puts them all back.
func queueHoldsStatus(t *testing.T, queue, id, status string) bool {
	t.Helper()
	conn, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	for {
		d, ok, err := ch.Get(queue, false)
		require.NoError(t, err)
		if !ok {
			return false
		}
		var m struct {
			TaskID string `json:"task_id"`
			Status string `json:"status"`
		}
		if json.Unmarshal(d.Body, &m) == nil && m.TaskID == id && m.Status == status {
			return true
		}
	}
}
