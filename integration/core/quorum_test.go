package core

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/echoworker"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// Celery 5.2.6, which CI runs, cannot consume quorum queues (it asks for
// global QoS, which they refuse). These tests stand a Go echo worker in for
// a Celery 5.5+ worker on quorum queues, and declare the queues exactly as
// such a worker does (harness.DeclareCeleryQueue, and the native delayed
// delivery topology of the captured fixture, harness.DeclareDelayedDelivery).

// quorumLogger returns a logger that keeps warnings and errors in buf too.
func quorumLogger(t *testing.T, buf *harness.SyncBuffer) amqp.Option {
	return amqp.WithLogger(zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), buf)).Level(zerolog.WarnLevel))
}

func queueRow(t *testing.T, name string) (brokerQueue, bool) {
	t.Helper()
	top := readTopology(t, name)
	q, ok := top.queues[name]
	return q, ok
}

func startEcho(t *testing.T, cfg echoworker.Config) *echoworker.Worker {
	t.Helper()
	cfg.URL = harness.BrokerURL()
	if cfg.Channels == 0 {
		cfg.Channels = 1
	}
	w, err := echoworker.Start(harness.Ctx(t, 20*time.Second), cfg)
	require.NoError(t, err)
	t.Cleanup(w.Stop)
	return w
}

func deleteCeleryQueue(t *testing.T, q harness.CeleryQueue) {
	t.Cleanup(func() {
		if err := harness.DeleteCeleryQueue(context.Background(), harness.BrokerURL(), q); err != nil {
			t.Logf("cleanup %s: %v", q.Name, err)
		}
	})
}

// Dial declares nothing: a client whose default queue does not exist
// leaves it missing until a task is sent to it.
func TestQuorumDialDeclaresNothing(t *testing.T) {
	q := harness.Name("dial-nothing")
	c := harness.Dial(t, "core", q)
	time.Sleep(200 * time.Millisecond) // anything Dial started has had time to reach the broker
	_, exists := queueRow(t, q)
	assert.False(t, exists, "Dial declared the default queue")
	_ = c
}

// stalk sends first, to a queue that does not exist yet, configured as the
// fleet's quorum queue; a Celery 5.5+ worker that starts afterwards
// declares it as quorum and consumes it. The same with stalk's defaults
// (classic) makes the worker's declaration fail with the 406 that kills a
// real worker: the check is not vacuous.
func TestQuorumSendFirstThenWorkerDeclares(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	for _, cfg := range []struct {
		name string
		opts []amqp.Option
	}{
		{"default-queue-type", []amqp.Option{amqp.WithDefaultQueueType(amqp.Quorum)}},
		{"task-queues", nil},
		{"missing-queue-type", []amqp.Option{amqp.WithMissingQueueType(amqp.Quorum)}},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			q := harness.Name("qq-first", cfg.name)
			cq := harness.CeleryQueue{Name: q, Quorum: true}
			deleteCeleryQueue(t, cq)
			opts := cfg.opts
			defQueue := q
			switch cfg.name {
			case "task-queues":
				opts = []amqp.Option{amqp.WithTaskQueues(amqp.TaskQueue{Name: q, Type: amqp.Quorum})}
			case "missing-queue-type":
				defQueue = harness.Name("unused-default")
			}
			var logs harness.SyncBuffer
			c := harness.Dial(t, "core", defQueue, append(opts, quorumLogger(t, &logs))...)
			r, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3), amqp.Queue(q))
			require.NoError(t, err)

			row, ok := queueRow(t, q)
			require.True(t, ok)
			assert.Equal(t, "quorum", row.Type)
			assert.True(t, row.Durable)
			assert.False(t, row.AutoDelete)
			assert.JSONEq(t, `[["x-queue-type","longstr","quorum"]]`, string(row.Arguments))

			// The worker declares its queue as a Celery 5.5+ worker does, then consumes.
			require.NoError(t, harness.DeclareCeleryQueue(ctx, harness.BrokerURL(), cq), "the worker's declaration")
			startEcho(t, echoworker.Config{Queue: q, QueueType: "quorum", NoDeclare: true})
			v, err := r.Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, []any{int64(2), int64(3)}, v)
			assert.Empty(t, logs.String(), "no warnings")
		})
	}
	t.Run("negative control: classic first", func(t *testing.T) {
		q := harness.Name("qq-first-classic")
		cq := harness.CeleryQueue{Name: q, Quorum: true}
		deleteCeleryQueue(t, cq)
		c := harness.Dial(t, "core", q)
		_, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3))
		require.NoError(t, err)
		row, ok := queueRow(t, q)
		require.True(t, ok)
		assert.Equal(t, "classic", row.Type)
		err = harness.DeclareCeleryQueue(ctx, harness.BrokerURL(), cq)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "inequivalent arg 'x-queue-type'")
	})
}

// A queue the workers declared as quorum, on a topic exchange, is used as it
// is, by a client that was told nothing about it: no process logs a 406,
// and the task arrives.
func TestQuorumExistingQueueUsedAsIs(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	q := harness.Name("qq-existing")
	cq := harness.CeleryQueue{Name: q, ExchangeType: "topic", Quorum: true}
	deleteCeleryQueue(t, cq)
	require.NoError(t, harness.DeclareCeleryQueue(ctx, harness.BrokerURL(), cq))
	startEcho(t, echoworker.Config{Queue: q, QueueType: "quorum", NoDeclare: true})
	harness.ForModes(t, func(t testing.TB, opts ...amqp.Option) *amqp.Client {
		return harness.Dial(t, "core", q, opts...)
	}, func(t *testing.T, c *amqp.Client) {
		for i := range 3 {
			r, err := c.Send(ctx, "tasks.add", amqp.Args(i))
			require.NoError(t, err)
			v, err := r.Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, int64(i), v)
		}
	})
	row, ok := queueRow(t, q)
	require.True(t, ok)
	assert.Equal(t, "quorum", row.Type, "unchanged")
}

// A queue on a topic exchange is published to its own exchange with its
// routing key, as Celery does; on a direct exchange, to the default
// exchange with the queue's name.
func TestQuorumRoutesAsCelery(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	topicQ := harness.CeleryQueue{Name: harness.Name("route-topic"), Exchange: harness.Name("route-topic-x"), ExchangeType: "topic", RoutingKey: "jobs.route", Quorum: true}
	directQ := harness.CeleryQueue{Name: harness.Name("route-direct"), Quorum: true}
	for _, cq := range []harness.CeleryQueue{topicQ, directQ} {
		deleteCeleryQueue(t, cq)
	}
	c := harness.Dial(t, "core", directQ.Name, amqp.WithTaskQueues(
		amqp.TaskQueue{Name: topicQ.Name, Exchange: topicQ.Exchange, ExchangeType: amqp.TopicExchange, RoutingKey: topicQ.RoutingKey, Type: amqp.Quorum},
		amqp.TaskQueue{Name: directQ.Name, Type: amqp.Quorum},
	))
	// stalk declares both (they do not exist yet), exactly as the worker
	// would: the worker's own declaration then succeeds.
	rt, err := c.Send(ctx, "tasks.add", amqp.Args(1), amqp.Queue(topicQ.Name))
	require.NoError(t, err)
	rd, err := c.Send(ctx, "tasks.add", amqp.Args(2))
	require.NoError(t, err)
	for _, cq := range []harness.CeleryQueue{topicQ, directQ} {
		require.NoError(t, harness.DeclareCeleryQueue(ctx, harness.BrokerURL(), cq), "worker declaration of %s", cq.Name)
	}
	wt := startEcho(t, echoworker.Config{Queue: topicQ.Name, QueueType: "quorum", NoDeclare: true, Record: true,
		Exchange: topicQ.Exchange, ExchangeType: "topic", RoutingKey: topicQ.RoutingKey})
	wd := startEcho(t, echoworker.Config{Queue: directQ.Name, QueueType: "quorum", NoDeclare: true, Record: true})
	_, err = rt.Get(ctx)
	require.NoError(t, err)
	_, err = rd.Get(ctx)
	require.NoError(t, err)
	got, ok := wt.Received(rt.ID())
	require.True(t, ok)
	assert.Equal(t, topicQ.Exchange, got.Exchange)
	assert.Equal(t, topicQ.RoutingKey, got.RoutingKey)
	got, ok = wd.Received(rd.ID())
	require.True(t, ok)
	assert.Equal(t, "", got.Exchange)
	assert.Equal(t, directQ.Name, got.RoutingKey)
}

// delayedQueue declares a topic-exchange quorum queue and the native delayed
// delivery topology bound to it, as a Celery 5.5+ worker does at start-up.
func delayedQueue(t *testing.T, name string) (harness.CeleryQueue, amqp.TaskQueue) {
	t.Helper()
	cq := harness.CeleryQueue{Name: harness.Name(name), Exchange: harness.Name(name, "x"), ExchangeType: "topic", RoutingKey: harness.Name(name, "rk"), Quorum: true}
	deleteCeleryQueue(t, cq)
	require.NoError(t, harness.DeclareDelayedDelivery(harness.Ctx(t, time.Minute), harness.BrokerURL(), cq))
	return cq, amqp.TaskQueue{Name: cq.Name, Exchange: cq.Exchange, ExchangeType: amqp.TopicExchange, RoutingKey: cq.RoutingKey, Type: amqp.Quorum}
}

// Countdowns to a quorum queue on a topic exchange go through native
// delayed delivery: they reach the queue on time, through
// celery_delayed_delivery, and a plain task sent behind ten of them is not
// blocked. Sent as worker-held ETAs instead (DelayedOff, what stalk did
// before), the same ten block it until they are due: the worker's prefetch
// is fixed on quorum queues.
func TestQuorumDelayedDelivery(t *testing.T) {
	const countdown = 3 * time.Second
	for _, mode := range []struct {
		name    string
		delayed amqp.DelayedDelivery
	}{{"native", amqp.DelayedAuto}, {"worker-held", amqp.DelayedOff}} {
		t.Run(mode.name, func(t *testing.T) {
			ctx := harness.Ctx(t, time.Minute)
			cq, tq := delayedQueue(t, "delayed-"+mode.name)
			w := startEcho(t, echoworker.Config{Queue: cq.Name, QueueType: "quorum", NoDeclare: true, Record: true, HoldETA: true,
				Prefetch: 10, Exchange: cq.Exchange, ExchangeType: "topic", RoutingKey: cq.RoutingKey, DefaultQueue: cq.Name})
			c := harness.Dial(t, "core", cq.Name, amqp.WithTaskQueues(tq), amqp.WithReplyMode(amqp.Shared), amqp.WithDelayedDelivery(mode.delayed))
			start := time.Now()
			var delayed []*result.AsyncResult
			for i := range 10 {
				r, err := c.Send(ctx, "tasks.add", amqp.Args(i), amqp.Countdown(countdown))
				require.NoError(t, err)
				delayed = append(delayed, r)
			}
			time.Sleep(200 * time.Millisecond) // the held ones reach the worker first
			plainSent := time.Now()
			plain, err := c.Send(ctx, "tasks.add", amqp.Args("now"))
			require.NoError(t, err)
			_, err = plain.Get(ctx)
			require.NoError(t, err)
			plainWait := time.Since(plainSent)
			var last time.Duration
			for _, r := range delayed {
				_, err := r.Get(ctx)
				require.NoError(t, err)
				rc, ok := w.Received(r.ID())
				require.True(t, ok)
				at := rc.Received.Sub(start)
				last = max(last, at)
				if mode.delayed == amqp.DelayedAuto {
					assert.Equal(t, "celery_delayed_delivery", rc.Exchange, "arrived through delayed delivery")
					assert.GreaterOrEqual(t, at, countdown-50*time.Millisecond, "not before its countdown")
				}
				assert.NotEmpty(t, rc.ETA, "the eta header is kept")
			}
			assert.Less(t, last, countdown+2*time.Second, "on time")
			t.Logf("%s: plain task answered %s after it was sent; last delayed task received %s after the first was sent", mode.name, plainWait.Round(time.Millisecond), last.Round(time.Millisecond))
			if mode.delayed == amqp.DelayedAuto {
				assert.Less(t, plainWait, time.Second, "a plain task is not blocked by delayed ones")
			} else {
				assert.Greater(t, plainWait, countdown/2, "negative control: worker-held ETAs block it")
			}
		})
	}
}

// A retry of a task on a topic-exchange quorum queue comes back, through
// delayed delivery: the worker re-routes it by the exchange it was
// delivered through, which is the queue's own because stalk published it
// there. (Published to the default exchange, a Celery 5.6 worker rejects a
// sub-second retry and no final state ever comes.)
func TestQuorumRetryArrives(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	cq, tq := delayedQueue(t, "retry")
	w := startEcho(t, echoworker.Config{Queue: cq.Name, QueueType: "quorum", NoDeclare: true, Record: true, HoldETA: true,
		Exchange: cq.Exchange, ExchangeType: "topic", RoutingKey: cq.RoutingKey, DefaultQueue: cq.Name})
	harness.ForModes(t, func(t testing.TB, opts ...amqp.Option) *amqp.Client {
		return harness.Dial(t, "core", cq.Name, append([]amqp.Option{amqp.WithTaskQueues(tq)}, opts...)...)
	}, func(t *testing.T, c *amqp.Client) {
		r, err := c.Send(ctx, "echo.retry", amqp.Args(2, 1))
		require.NoError(t, err)
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(2), v)
		assert.Equal(t, 2, r.Retries())
		rs := w.Receipts(r.ID())
		require.Len(t, rs, 3)
		assert.Equal(t, cq.Exchange, rs[0].Exchange, "the first delivery came through the queue's own exchange")
	})
	// The negative control: the same task published to the default
	// exchange with a sub-second retry gets no final state.
	c := harness.Dial(t, "core", cq.Name)
	r, err := c.Send(ctx, "echo.retry", amqp.Args(1, 0.5), amqp.Exchange(""), amqp.RoutingKey(cq.Name))
	require.NoError(t, err)
	_, err = r.Get(ctx, result.Timeout(3*time.Second))
	assert.ErrorIs(t, err, result.ErrTimeout)
}

// vhost creates a vhost of the test's own, with guest's permissions, and
// returns its broker URL. It is deleted at the end of the test.
func vhost(t *testing.T) string {
	t.Helper()
	name := harness.Name("vhost", strings.ReplaceAll(t.Name(), "/", "-"))
	out, err := harness.Rabbitmqctl("add_vhost", name)
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { _, _ = harness.Rabbitmqctl("delete_vhost", name) })
	out, err = harness.Rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
	require.NoError(t, err, "%s", out)
	return strings.TrimSuffix(harness.BrokerURL(), "/") + "/" + name
}

// On a vhost where no Celery 5.5+ worker ever declared native delayed
// delivery, a countdown to a quorum topic queue falls back to a worker-held
// ETA with one warning (DelayedAuto), or fails naming the missing exchange
// (DelayedRequired). Either way nothing is confirmed and lost.
func TestQuorumDelayedDeliveryMissing(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	url := vhost(t)
	q := amqp.TaskQueue{Name: "fxq", ExchangeType: amqp.TopicExchange, Type: amqp.Quorum}
	var logs harness.SyncBuffer
	c := harness.DialURL(t, url, harness.Name("delayed-missing"), 20*time.Second, amqp.WithTaskQueues(q), amqp.WithDefaultQueue("fxq"), quorumLogger(t, &logs))
	w, err := echoworker.Start(ctx, echoworker.Config{URL: url, Queue: "fxq", QueueType: "quorum", NoDeclare: true, HoldETA: true, Channels: 1})
	if err == nil {
		t.Cleanup(w.Stop)
	}
	require.Error(t, err, "the queue does not exist before stalk declares it")
	var rs []*result.AsyncResult
	for i := range 3 {
		r, err := c.Send(ctx, "tasks.add", amqp.Args(i), amqp.Countdown(time.Second))
		require.NoError(t, err)
		rs = append(rs, r)
	}
	w, err = echoworker.Start(ctx, echoworker.Config{URL: url, Queue: "fxq", QueueType: "quorum", NoDeclare: true, HoldETA: true, Channels: 1})
	require.NoError(t, err)
	t.Cleanup(w.Stop)
	for i, r := range rs {
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(i), v)
	}
	assert.EqualValues(t, 3, c.Stats().DelayedFallback)
	assert.Equal(t, 1, strings.Count(logs.String(), "native delayed delivery is not set up"), "one warning: %s", logs.String())

	strict := harness.DialURL(t, url, harness.Name("delayed-required"), 20*time.Second, amqp.WithTaskQueues(q), amqp.WithDefaultQueue("fxq"),
		amqp.WithDelayedDelivery(amqp.DelayedRequired))
	_, err = strict.Send(ctx, "tasks.add", amqp.Args(1), amqp.Countdown(time.Second))
	require.ErrorIs(t, err, amqp.ErrNoDelayedDelivery)
	assert.Contains(t, err.Error(), "celery_delayed_27")
	assert.Equal(t, 0, strict.Stats().Pending, "nothing stays registered")
}

// A task that routes to no queue is an error, not a confirmed drop; so is
// one to a queue that does not exist when the workers own the topology.
func TestUnroutableIsAnError(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	harness.ForModes(t, dial, func(t *testing.T, c *amqp.Client) {
		start := time.Now()
		_, err := c.Send(ctx, "tasks.add", amqp.Args(1), amqp.Exchange("amq.direct"), amqp.RoutingKey(harness.Name("nobody-binds-this")))
		require.ErrorIs(t, err, amqp.ErrUnroutable)
		assert.Contains(t, err.Error(), "amq.direct")
		assert.Less(t, time.Since(start), 5*time.Second)
		assert.Equal(t, 0, c.Stats().Pending, "nothing stays registered")
	})
	owned := dial(t, amqp.WithDeclareQueues(false))
	missing := harness.Name("owned-missing")
	_, err := owned.Send(ctx, "tasks.add", amqp.Args(1), amqp.Queue(missing))
	require.ErrorIs(t, err, amqp.ErrQueueNotFound)
	_, exists := queueRow(t, missing)
	assert.False(t, exists, "stalk did not declare it")
	// The run's queue exists (its worker declared it): that works.
	r, err := owned.Send(ctx, "tasks.add", amqp.Args(1, 2))
	require.NoError(t, err)
	v, err := r.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(3), v)
}

// A publish to an exchange that does not exist is one clear error naming
// it, with no reconnect; also when the exchange disappears after the
// client has published to it (the broker closes the publishing channel:
// publishes to other exchanges on it go out again on a new channel).
func TestExchangeNotFoundIsOneError(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	c := dial(t)
	var reconnects atomic.Int32
	c.OnStateChange(func(publishing bool, s amqp.ConnState) {
		if s == amqp.Reconnecting {
			reconnects.Add(1)
		}
	})
	for range 3 {
		start := time.Now()
		_, err := c.Send(ctx, "tasks.add", amqp.Args(1), amqp.Exchange(harness.Name("no-such-exchange")))
		require.ErrorIs(t, err, amqp.ErrExchangeNotFound)
		assert.Contains(t, err.Error(), harness.Name("no-such-exchange"))
		assert.Less(t, time.Since(start), 5*time.Second)
	}

	// An exchange that exists, is used, then is deleted.
	x := harness.Name("vanishing-x")
	admin, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	defer admin.Close()
	ch, err := admin.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.ExchangeDeclare(x, "direct", true, false, false, false, nil))
	require.NoError(t, ch.QueueBind(queue, "vanishing", x, false, nil))
	r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 1), amqp.Exchange(x), amqp.RoutingKey("vanishing"))
	require.NoError(t, err)
	_, err = r.Get(ctx)
	require.NoError(t, err)
	require.NoError(t, ch.ExchangeDelete(x, false, false))
	_, err = c.Send(ctx, "tasks.add", amqp.Args(1), amqp.Exchange(x), amqp.RoutingKey("vanishing"))
	require.ErrorIs(t, err, amqp.ErrExchangeNotFound)
	// The client goes on publishing.
	r, err = c.Send(ctx, "tasks.add", amqp.Args(2, 2))
	require.NoError(t, err)
	v, err := r.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(4), v)
	assert.Zero(t, reconnects.Load(), "no reconnect")
}

// Floats go out as JSON floats that a Python worker reads as float (2.0 and
// 1e20 used to arrive as int), and argsrepr is what Celery's saferepr
// writes for the same values.
func TestFloatsArriveAsFloats(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	c := dial(t)
	r, err := c.Send(ctx, "tasks.types", amqp.Args(2.0, 1e20, 3, "x", []any{1.5, 2.0}, float32(0.5)), amqp.Kwargs(map[string]any{"f": 4.0, "i": 4}))
	require.NoError(t, err)
	v, err := r.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, map[string]any{
		"args":   []any{"float", "float", "int", "str", "list", "float"},
		"kwargs": map[string]any{"f": "float", "i": "int"},
	}, v)

	r, err = c.Send(ctx, "tasks.request_info", amqp.Args("argsrepr", "kwargsrepr"), amqp.Kwargs(map[string]any{"it's": 2.0}))
	require.NoError(t, err)
	v, err = r.Get(ctx)
	require.NoError(t, err)
	info := v.(map[string]any)
	assert.Equal(t, "('argsrepr', 'kwargsrepr')", info["argsrepr"])
	assert.Equal(t, `{'it\'s': 2.0}`, info["kwargsrepr"])
}

// Stamps reach the worker as Celery 5.3+ stamping sends them: the
// stamped_headers list and the stamps table become request attributes.
func TestStampsReachTheWorker(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	c := dial(t)
	r, err := c.Send(ctx, "tasks.request_info", amqp.Args("stamped_headers", "stamps", "replaced_task_nesting"),
		amqp.Stamp("tenant", "acme"), amqp.Stamp("batch", []string{"b1", "b2"}))
	require.NoError(t, err)
	v, err := r.Get(ctx)
	require.NoError(t, err)
	info := v.(map[string]any)
	assert.Equal(t, []any{"batch", "tenant"}, info["stamped_headers"])
	assert.Equal(t, map[string]any{"tenant": "acme", "batch": []any{"b1", "b2"}}, info["stamps"])
	assert.Equal(t, int64(0), info["replaced_task_nesting"])
}
