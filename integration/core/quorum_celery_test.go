package core

import (
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// TestQuorumCeleryFleet runs stalk against a real Celery 5.5+ worker that
// owns its topology: the worker declares its queue as a quorum queue on a
// topic exchange, and native delayed delivery, and stalk, told what the
// fleet looks like, uses them as they are. CI's Celery 5.2.6 cannot consume
// a quorum queue, so there the echo-worker tests above stand in for this
// one, which needs STALK_PYTHON to name a Celery 5.5+ interpreter.
func TestQuorumCeleryFleet(t *testing.T) {
	if !harness.CeleryAtLeast(5, 5) {
		t.Skipf("needs a Celery 5.5+ worker (STALK_PYTHON); this one is %s", harness.CeleryVersion())
	}
	q := harness.Name("fleet-quorum")
	w, err := harness.StartWorker(harness.WorkerConfig{Queue: q, Concurrency: 2, Env: map[string]string{
		"STALK_MISSING_QUEUE_TYPE":    "quorum",
		"STALK_MISSING_EXCHANGE_TYPE": "topic",
	}})
	require.NoError(t, err)
	t.Cleanup(w.Stop)
	deleteCeleryQueue(t, harness.CeleryQueue{Name: q, ExchangeType: "topic", Quorum: true})

	out, err := harness.Rabbitmqctl("list_queues", "-q", "name", "type")
	require.NoError(t, err, out)
	require.Regexp(t, `(?m)^`+regexp.QuoteMeta(q)+`\s+quorum$`, out, "the worker declared its queue as quorum")
	out, err = harness.Rabbitmqctl("list_exchanges", "-q", "name", "type")
	require.NoError(t, err, out)
	require.Regexp(t, `(?m)^celery_delayed_27\s+topic$`, out, "the worker declared native delayed delivery")

	fleet := amqp.TaskQueue{Name: q, Exchange: q, ExchangeType: amqp.TopicExchange, RoutingKey: q, Type: amqp.Quorum}
	harness.ForModes(t, func(t testing.TB, opts ...amqp.Option) *amqp.Client {
		return harness.Dial(t, "core", q, append([]amqp.Option{amqp.WithTaskQueues(fleet),
			amqp.WithDeclareQueues(false), amqp.WithDelayedDelivery(amqp.DelayedRequired)}, opts...)...)
	}, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 90*time.Second)

		r, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3))
		require.NoError(t, err)
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(5), v)

		// Ten countdowns go through the broker's delayed-delivery
		// exchanges, not into the worker's prefetch, so a plain task sent
		// behind them is answered at once.
		const countdown = 3 * time.Second
		start := time.Now()
		var delayed []*result.AsyncResult
		for i := range 10 {
			r, err := c.Send(ctx, "tasks.request_info", amqp.Args("eta"), amqp.Kwargs(map[string]any{"n": i}), amqp.Countdown(countdown))
			require.NoError(t, err)
			delayed = append(delayed, r)
		}
		time.Sleep(200 * time.Millisecond)
		plainSent := time.Now()
		r, err = c.Send(ctx, "tasks.add", amqp.Args(1, 1))
		require.NoError(t, err)
		_, err = r.Get(ctx)
		require.NoError(t, err)
		plainWait := time.Since(plainSent)
		for _, r := range delayed {
			v, err := r.Get(ctx)
			require.NoError(t, err)
			at := time.Since(start)
			info := v.(map[string]any)
			assert.NotEmpty(t, info["eta"], "the eta header is kept")
			di := info["delivery_info"].(map[string]any)
			assert.Equal(t, "celery_delayed_delivery", di["exchange"], "arrived through native delayed delivery")
			assert.GreaterOrEqual(t, at, countdown-100*time.Millisecond, "not before its countdown")
		}
		last := time.Since(start)
		t.Logf("Celery %s, quorum fleet: plain task answered %s behind ten %s countdowns; the last countdown's result was in %s after the first was sent",
			harness.CeleryVersion(), plainWait.Round(time.Millisecond), countdown, last.Round(time.Millisecond))
		assert.Less(t, plainWait, time.Second, "a plain task is not blocked by countdowns")
		assert.Less(t, last, countdown+3*time.Second, "countdowns arrive on time")

		// A task that retries twice with a 0.1 s countdown: the worker
		// re-publishes it through the queue's own exchange.
		r, err = c.Send(ctx, "tasks.flaky", amqp.Kwargs(map[string]any{"times": 2}))
		require.NoError(t, err)
		_, err = r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, 2, r.Retries())

		// Floats stay floats in the worker.
		r, err = c.Send(ctx, "tasks.types", amqp.Args(2.0, 1e20, 3))
		require.NoError(t, err)
		v, err = r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, map[string]any{"args": []any{"float", "float", "int"}, "kwargs": map[string]any{}}, v)
	})

	// The negative control: the same countdowns held by the worker as ETA
	// tasks fill its fixed prefetch (quorum queues allow no global QoS
	// for the worker to raise), and the plain task waits for them.
	t.Run("worker-held", func(t *testing.T) {
		ctx := harness.Ctx(t, 90*time.Second)
		c := harness.Dial(t, "core", q, amqp.WithTaskQueues(fleet), amqp.WithDeclareQueues(false),
			amqp.WithDelayedDelivery(amqp.DelayedOff))
		const countdown = 3 * time.Second
		var delayed []*result.AsyncResult
		for i := range 10 {
			r, err := c.Send(ctx, "tasks.add", amqp.Args(i, 0), amqp.Countdown(countdown))
			require.NoError(t, err)
			delayed = append(delayed, r)
		}
		time.Sleep(200 * time.Millisecond)
		plainSent := time.Now()
		r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 1))
		require.NoError(t, err)
		_, err = r.Get(ctx)
		require.NoError(t, err)
		plainWait := time.Since(plainSent)
		for _, r := range delayed {
			_, err := r.Get(ctx)
			require.NoError(t, err)
		}
		t.Logf("Celery %s, quorum fleet, worker-held ETAs: plain task answered %s behind ten %s countdowns",
			harness.CeleryVersion(), plainWait.Round(time.Millisecond), countdown)
		assert.Greater(t, plainWait, countdown/2, "worker-held ETAs block a plain task")
	})
}
