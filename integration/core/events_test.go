package core

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// A client with WithEvents fills Worker, Retries and DateDone from the
// event stream, also for a task another client sent; WithSentEvents makes
// Go-sent tasks visible as task-sent events.
func TestSendEventsMetadata(t *testing.T) {
	q := harness.Name("core-events")
	w, err := harness.StartWorker(harness.WorkerConfig{Queue: q, Events: true, Concurrency: 1})
	require.NoError(t, err)
	defer w.Stop()
	ctx := harness.Ctx(t, 60*time.Second)

	watcher := dial(t, amqp.WithEvents())
	sender := dial(t, amqp.WithSentEvents(true), amqp.WithReplyMode(amqp.Shared))
	r, err := sender.Send(ctx, "tasks.flaky", amqp.Args(1), amqp.Queue(q))
	require.NoError(t, err)
	_, err = r.Get(ctx)
	require.NoError(t, err)

	st := watcher.Events()
	require.NotNil(t, st)
	require.Eventually(t, func() bool {
		tk, ok := st.Task(r.ID())
		return ok && tk.State == result.State("SUCCESS") && tk.Client != ""
	}, 20*time.Second, 50*time.Millisecond, "task-sent and task-succeeded seen by the watcher")
	tk, _ := st.Task(r.ID())
	assert.Equal(t, "tasks.flaky", tk.Name)
	assert.Equal(t, w.Hostname, tk.Worker)

	// The watcher did not send the task; its AsyncResult is filled from
	// events (in shared mode the watcher gets no result message at all).
	other := watcher.AsyncResult(r.ID())
	assert.Equal(t, w.Hostname, other.Worker())
	assert.Equal(t, 1, other.Retries())
	assert.False(t, other.DateDone().IsZero())
	assert.Equal(t, "tasks.flaky", other.Name())

	// A task sent after attaching gets the same treatment live.
	ctx2, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r2, err := sender.Send(ctx2, "tasks.add", amqp.Args(1, 1), amqp.Queue(q))
	require.NoError(t, err)
	late := watcher.AsyncResult(r2.ID())
	require.Eventually(t, func() bool { return !late.DateDone().IsZero() }, 20*time.Second, 50*time.Millisecond)
	assert.Equal(t, w.Hostname, late.Worker())
}

// Retries with WithEvents counts each retry once, although task-received
// events ("retries 1") often arrive before the RETRY result messages. It
// used to say 3 for a task retried twice, about one time in two.
func TestSendRetriesWithEvents(t *testing.T) {
	q := harness.Name("core-retries")
	w, err := harness.StartWorker(harness.WorkerConfig{Queue: q, Events: true, Concurrency: 2})
	require.NoError(t, err)
	defer w.Stop()
	ctx := harness.Ctx(t, 2*time.Minute)
	harness.ForModes(t, func(t testing.TB, opts ...amqp.Option) *amqp.Client {
		return dial(t, append([]amqp.Option{amqp.WithEvents()}, opts...)...)
	}, func(t *testing.T, c *amqp.Client) {
		for range 3 {
			r, err := c.Send(ctx, "tasks.flaky", amqp.Args(2), amqp.Queue(q))
			require.NoError(t, err)
			_, err = r.Get(ctx)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				tk, ok := c.Events().Task(r.ID())
				return ok && tk.State == result.Success
			}, 10*time.Second, 10*time.Millisecond)
			assert.Equal(t, 2, r.Retries())
		}
	})
}
