package fault

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// TestFaultWorkerKilledAcksLate kills, with SIGKILL, the worker running an
// acks_late task: the broker redelivers the task to the other worker, and
// its result arrives.
func TestFaultWorkerKilledAcksLate(t *testing.T) {
	require.Len(t, lateW, 2)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			c := dial(t, harness.Name("late", mode.String()), amqp.WithReplyMode(mode), amqp.WithDefaultQueue(lateQ))
			ctx := harness.Ctx(t, 90*time.Second)
			r, err := c.Send(ctx, "tasks.slow_late", amqp.Args(2))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return r.State() == result.Started }, 30*time.Second, 10*time.Millisecond)
			first := r.Worker()
			var victim, other *harness.Worker
			for _, w := range lateW {
				if w.Hostname == first {
					victim = w
				} else {
					other = w
				}
			}
			require.NotNil(t, victim, "task started on %q, not one of ours", first)
			require.NotNil(t, other)
			victim.Kill()
			t.Logf("killed %s (SIGKILL) while it ran %s", first, r.ID())

			v, err := r.Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, int64(2), v)
			assert.Equal(t, other.Hostname, r.Worker(), "the other worker ran it")
			var started int
			for _, m := range r.Entry().History() {
				if m.Status == result.Started {
					started++
				}
			}
			assert.Equal(t, 2, started, "STARTED on both workers")

			// Replace the killed worker for the next mode.
			w, err := harness.StartWorker(harness.WorkerConfig{Queue: lateQ, Concurrency: 1,
				Env: map[string]string{"STALK_PREFETCH": "1"}})
			require.NoError(t, err)
			lateW = []*harness.Worker{other, w}
		})
	}
}

// TestFaultReplyQueueDeleted deletes the reply queue of a pending result
// behind the client's back: the result fails with ErrReplyQueueDeleted,
// and later tasks still work.
func TestFaultReplyQueueDeleted(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			c := dial(t, harness.Name("qdel", mode.String()), amqp.WithReplyMode(mode))
			ctx := harness.Ctx(t, 60*time.Second)
			r, err := c.Send(ctx, "tasks.slow", amqp.Args(3))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return r.State() == result.Started }, 30*time.Second, 10*time.Millisecond)

			ch, err := rawConn(t).Channel()
			require.NoError(t, err)
			_, err = ch.QueueDelete(c.ReplyQueue(r.ID()), false, false, false)
			require.NoError(t, err)

			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err = r.Get(wctx)
			require.Error(t, err)
			require.ErrorIs(t, err, amqp.ErrReplyQueueDeleted)
			assert.Contains(t, err.Error(), c.ReplyQueue(r.ID()))
			t.Logf("pending result: %v", err)
			assert.Equal(t, int64(1), c.Stats().Deleted)

			// Later tasks work.
			for i := range 3 {
				r2, err := c.Send(ctx, "tasks.add", amqp.Args(i, 10))
				require.NoError(t, err)
				v, err := r2.Get(ctx)
				require.NoError(t, err)
				assert.Equal(t, int64(i+10), v)
			}
			assert.Zero(t, c.Stats().Pending)
		})
	}
}

// TestFaultCloseNoLeaks closes a client that has lived through a killed
// connection and has results pending: they are rejected with ErrClosed,
// and no goroutine is left behind.
func TestFaultCloseNoLeaks(t *testing.T) {
	raw := rawConn(t) // opened before the goroutine baseline
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			name := harness.Name("close", mode.String())
			c, err := amqp.Dial(ctx, harness.BrokerURL(), amqp.WithReplyMode(mode), amqp.WithDefaultQueue(transientQ),
				amqp.WithConnectionName(name), amqp.WithResultExpires(time.Minute))
			require.NoError(t, err)
			r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 2))
			require.NoError(t, err)
			_, err = r.Get(ctx)
			require.NoError(t, err)
			require.Equal(t, 2, harness.CloseConns(t, name+"-results", name+"-publish"))
			require.Eventually(t, func() bool { return c.Stats().Reconnects == 1 && c.State() == amqp.Ready }, 20*time.Second, 10*time.Millisecond)

			var pending []*result.AsyncResult
			for range 5 {
				r, err := c.Send(ctx, "tasks.slow", amqp.Args(5))
				require.NoError(t, err)
				pending = append(pending, r)
			}
			errs := make(chan error, len(pending))
			for _, r := range pending {
				go func() { _, err := r.Get(ctx); errs <- err }()
			}
			thenErr := make(chan error, 1)
			pending[0].Then(nil, func(err error) { thenErr <- err })
			time.Sleep(100 * time.Millisecond)
			require.NoError(t, c.Close())
			require.NoError(t, c.Close(), "idempotent")
			for range pending {
				require.ErrorIs(t, <-errs, amqp.ErrClosed)
			}
			require.ErrorIs(t, <-thenErr, amqp.ErrClosed)
			_, err = c.Send(ctx, "tasks.add", amqp.Args(1, 1))
			require.ErrorIs(t, err, amqp.ErrClosed)
			assert.Equal(t, amqp.Closed, c.State())
			// Forget the slow tasks' queues so they do not linger.
			if mode == amqp.PerTask {
				ch, err := raw.Channel()
				require.NoError(t, err)
				defer ch.Close()
				for _, r := range pending {
					_, err := ch.QueueDelete(c.ReplyQueue(r.ID()), false, false, false)
					var ae *amqp091.Error
					if err != nil && !(errors.As(err, &ae) && ae.Code == amqp091.NotFound) {
						t.Logf("delete reply queue: %v", err)
					}
				}
			}
		})
	}
}
