package core

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// consumersOn returns the number of consumers on queue, as the broker
// counts them.
func consumersOn(t *testing.T, queue string) int {
	t.Helper()
	q, ok := harness.InspectQueue(t, queue)
	require.True(t, ok, "queue %s exists", queue)
	return q.Consumers
}

// messagesIn returns the number of ready messages in queue.
func messagesIn(t *testing.T, queue string) int {
	t.Helper()
	q, ok := harness.InspectQueue(t, queue)
	require.True(t, ok, "queue %s exists", queue)
	return q.Messages
}

// An id that will never get a result stops being followed once released:
// its waits end with ErrReleased, nothing stays pending, and in per-task
// mode its consumer is gone. A task released before its result arrives
// can still be read later, from its queue or from the result cache.
func TestSendRelease(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		base := c.Stats().Pending

		bogus := c.AsyncResult(uuid.NewString())
		waitErr := make(chan error, 1)
		go func() {
			_, err := bogus.Get(ctx)
			waitErr <- err
		}()
		require.Eventually(t, func() bool { return c.Stats().Pending == base+1 }, 10*time.Second, 5*time.Millisecond)
		if c.ReplyMode() == amqp.PerTask {
			require.Eventually(t, func() bool { return consumersOn(t, c.ReplyQueue(bogus.ID())) == 1 },
				10*time.Second, 20*time.Millisecond, "attached: one consumer on its queue")
		}
		require.NoError(t, bogus.Release())
		select {
		case err := <-waitErr:
			require.ErrorIs(t, err, result.ErrReleased)
		case <-ctx.Done():
			t.Fatal("a wait on a released result did not end")
		}
		assert.Equal(t, base, c.Stats().Pending)
		if c.ReplyMode() == amqp.PerTask {
			require.Eventually(t, func() bool { return consumersOn(t, c.ReplyQueue(bogus.ID())) == 0 },
				10*time.Second, 20*time.Millisecond, "released: no consumer left")
			require.NoError(t, c.AsyncResult(bogus.ID()).Forget(ctx))
		}
		require.NoError(t, bogus.Release(), "releasing twice is harmless")

		// Released while its consumer is still being set up: the consumer
		// does not outlive the release.
		if c.ReplyMode() == amqp.PerTask {
			ids := make([]string, 20)
			for i := range ids {
				ids[i] = uuid.NewString()
				r := c.AsyncResult(ids[i])
				require.Equal(t, result.Pending, r.State()) // attaches
				require.NoError(t, r.Release())
			}
			assert.Equal(t, base, c.Stats().Pending)
			time.Sleep(time.Second) // let every consumer setup finish
			for _, id := range ids {
				if q, ok := harness.InspectQueue(t, c.ReplyQueue(id)); ok {
					assert.Zero(t, q.Consumers, "a consumer outlived its release")
				}
				require.NoError(t, c.AsyncResult(id).Forget(ctx))
			}
		}

		// Attached and released over and over while the queue holds a
		// final state: the state is never stranded on a cancelled
		// consumer, and a later reader gets it.
		if c.ReplyMode() == amqp.PerTask {
			done, err := c.Send(ctx, "tasks.add", amqp.Args(20, 22))
			require.NoError(t, err)
			_, err = done.Get(ctx)
			require.NoError(t, err)
			other := dial(t)
			for i := range 60 {
				r := other.AsyncResult(done.ID())
				_ = r.State() // attaches
				// Release at different points of the consumer's setup.
				time.Sleep(time.Duration(i%6) * 400 * time.Microsecond)
				require.NoError(t, r.Release())
			}
			require.Eventually(t, func() bool { return messagesIn(t, c.ReplyQueue(done.ID())) == 1 },
				10*time.Second, 20*time.Millisecond, "the final state is back in its queue")
			v, err := dial(t).AsyncResult(done.ID()).Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, int64(42), v)
		}

		// Released before the result arrives; read later by id.
		orphans := c.Stats().Orphans
		r, err := c.Send(ctx, "tasks.slow", amqp.Args(1))
		require.NoError(t, err)
		require.NoError(t, r.Release())
		_, err = r.Get(ctx)
		require.ErrorIs(t, err, result.ErrReleased)
		// The result arrives while nobody follows the task: in the shared
		// queue it is kept as an orphan; in per-task mode it waits in the
		// task's queue.
		if c.ReplyMode() == amqp.Shared {
			require.Eventually(t, func() bool { return c.Stats().Orphans >= orphans+1 }, 20*time.Second, 10*time.Millisecond)
		} else {
			require.Eventually(t, func() bool { return queueHoldsStatus(t, c.ReplyQueue(r.ID()), r.ID(), "SUCCESS") },
				20*time.Second, 50*time.Millisecond)
		}
		v, err := c.AsyncResult(r.ID()).Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(1), v)
	})
}

// An id too long for AMQP (amqp091-go would silently truncate it, and the
// reply would go to another queue) is refused at once with an error that
// says so, by Send and by AsyncResult, and the client keeps working.
func TestSendIDTooLong(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		long := strings.Repeat("x", 256)
		_, err := c.Send(ctx, "tasks.add", amqp.Args(1, 2), amqp.TaskID(long))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "task id is 256 bytes, over AMQP's 255-byte limit")

		if c.ReplyMode() == amqp.PerTask {
			// Fits as an id, but not as a queue name with the prefix.
			id := strings.Repeat("y", 250)
			start := time.Now()
			_, err = c.AsyncResult(id).Get(ctx)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "per-task reply queue name is")
			assert.Less(t, time.Since(start), 5*time.Second, "refused at once, not at ctx")
			_, err = c.Send(ctx, "tasks.add", amqp.Args(1, 2), amqp.TaskID(id))
			require.Error(t, err)
			assert.Contains(t, err.Error(), "reply_to is 276 bytes, over AMQP's 255-byte limit")
		}
		r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 2))
		require.NoError(t, err)
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(3), v)
	})
}
