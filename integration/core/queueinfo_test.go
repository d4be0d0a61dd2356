package core

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// QueueInfo tells a queue with a worker from one without: a task sent to
// the second waits, and says so through the counts.
func TestQueueInfo(t *testing.T) {
	ctx := harness.Ctx(t, 30*time.Second)
	c := dial(t)
	info, err := c.QueueInfo(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, queue, info.Name)
	assert.True(t, info.Exists)
	assert.GreaterOrEqual(t, info.Consumers, 1, "the run's Celery worker consumes it")

	idle := harness.Name("no-worker")
	t.Cleanup(func() { harness.DeleteQueue(t, idle) })
	info, err = c.QueueInfo(ctx, idle)
	require.NoError(t, err)
	assert.False(t, info.Exists)
	_, err = c.Send(ctx, "tasks.add", amqp.Args(1, 2), amqp.Queue(idle))
	require.NoError(t, err)
	info, err = c.QueueInfo(ctx, idle)
	require.NoError(t, err)
	assert.Equal(t, amqp.QueueInfo{Name: idle, Exists: true, Messages: 1, Consumers: 0}, info)
}

// ForgetAfterGet deletes a per-task reply queue once its result is read,
// instead of leaving it for a day.
func TestForgetAfterGet(t *testing.T) {
	ctx := harness.Ctx(t, 30*time.Second)
	c := dial(t)
	r, err := c.Send(ctx, "tasks.add", amqp.Args(2, 2))
	require.NoError(t, err)
	v, err := r.Get(ctx, result.ForgetAfterGet())
	require.NoError(t, err)
	assert.Equal(t, int64(4), v)
	_, exists := harness.InspectQueue(t, c.ReplyQueue(r.ID()))
	assert.False(t, exists, "the reply queue is gone")

	kept, err := c.Send(ctx, "tasks.add", amqp.Args(3, 3))
	require.NoError(t, err)
	_, err = kept.Get(ctx)
	require.NoError(t, err)
	// The reader puts the final state back in the queue once it has it.
	require.Eventually(t, func() bool {
		q, exists := harness.InspectQueue(t, c.ReplyQueue(kept.ID()))
		return exists && q.Messages == 1
	}, 10*time.Second, 20*time.Millisecond, "without the option the result stays for other readers")
}
