package echoworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/integration/harness"
)

// stateMsg is one decoded result message.
type stateMsg struct {
	TaskID string          `json:"task_id"`
	Status string          `json:"status"`
	Result json.RawMessage `json:"result"`
	At     time.Time       `json:"-"`
	Body   string          `json:"-"`
}

// taskClient publishes task messages and reads their results with plain
// amqp091-go, from a reply queue of its own.
type taskClient struct {
	t       *testing.T
	ch      *amqp091.Channel
	reply   string
	results <-chan amqp091.Delivery
}

func newTaskClient(t *testing.T) *taskClient {
	t.Helper()
	conn, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	require.NoError(t, err)
	reply := harness.Name("echo-reply", fmt.Sprint(time.Now().UnixNano()))
	_, err = ch.QueueDeclare(reply, false, false, true, false, amqp091.Table{"x-expires": int32(120000)})
	require.NoError(t, err)
	// Exclusive: only this connection can delete it (before it closes).
	t.Cleanup(func() { _, _ = ch.QueueDelete(reply, false, false, false) })
	d, err := ch.Consume(reply, "", true, false, false, false, nil)
	require.NoError(t, err)
	return &taskClient{t: t, ch: ch, reply: reply, results: d}
}

// send publishes task name with args to exchange/key, with the headers a
// Python client sends plus extra (e.g. eta).
func (c *taskClient) send(ctx context.Context, exchange, key, id, task string, args []any, extra amqp091.Table) {
	c.t.Helper()
	body, err := json.Marshal([]any{args, map[string]any{}, map[string]any{"callbacks": nil, "errbacks": nil, "chain": nil, "chord": nil}})
	require.NoError(c.t, err)
	h := amqp091.Table{"lang": "py", "task": task, "id": id, "root_id": id, "parent_id": nil,
		"eta": nil, "expires": nil, "retries": int32(0), "argsrepr": fmt.Sprint(args), "kwargsrepr": "{}"}
	for k, v := range extra {
		h[k] = v
	}
	require.NoError(c.t, c.ch.PublishWithContext(ctx, exchange, key, false, false, amqp091.Publishing{
		ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp091.Persistent,
		CorrelationId: id, ReplyTo: c.reply, Body: body, Headers: h,
	}))
}

// next returns the next result message, or false after timeout.
func (c *taskClient) next(timeout time.Duration) (stateMsg, bool) {
	select {
	case m := <-c.results:
		var s stateMsg
		require.NoError(c.t, json.Unmarshal(m.Body, &s), string(m.Body))
		s.At, s.Body = time.Now(), string(m.Body)
		require.Equal(c.t, s.TaskID, m.CorrelationId)
		return s, true
	case <-time.After(timeout):
		return stateMsg{}, false
	}
}

// must returns the next result message, failing t after timeout.
func (c *taskClient) must(timeout time.Duration) stateMsg {
	c.t.Helper()
	s, ok := c.next(timeout)
	if !ok {
		c.t.Fatalf("no result within %s", timeout)
	}
	return s
}

// startWorker starts a worker for t, stopped at its end; its queue and
// exchange are deleted afterwards.
func startWorker(t *testing.T, cfg Config) *Worker {
	t.Helper()
	cfg.URL = harness.BrokerURL()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		q := harness.CeleryQueue{Name: cfg.Queue, Exchange: cfg.Exchange}
		if cfg.Exchange == "" {
			harness.DeleteQueue(t, cfg.Queue)
			return
		}
		if err := harness.DeleteCeleryQueue(ctx, harness.BrokerURL(), q); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	w, err := Start(harness.Ctx(t, 30*time.Second), cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		w.Stop()
		require.NoError(t, w.Err())
	})
	return w
}

// requireProcessed waits for the worker's count of published results to
// reach n, then checks that it is exactly n. The worker counts a result
// after its publish returns, so a client can read the result a moment
// before the count moves.
func requireProcessed(t *testing.T, w *Worker, n int64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for w.Processed() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	require.Equal(t, n, w.Processed())
}

func TestQuorumQueueConsume(t *testing.T) {
	ctx := harness.Ctx(t, 60*time.Second)
	q := harness.Name("echo-qq")
	w := startWorker(t, Config{Queue: q, QueueType: "quorum", Channels: 2, Prefetch: 8, Record: true})
	c := newTaskClient(t)
	c.send(ctx, "", q, "qq-1", "tasks.echo", []any{7}, nil)
	s := c.must(10 * time.Second)
	require.Equal(t, `{"task_id": "qq-1", "status": "SUCCESS", "result": 7, "traceback": null, "children": []}`, s.Body)
	r, ok := w.Received("qq-1")
	require.True(t, ok)
	require.Equal(t, "", r.Exchange)
	require.Equal(t, q, r.RoutingKey)
	require.Equal(t, "tasks.echo", r.Headers["task"])

	// The queue really is a quorum queue: a classic declare is refused.
	conn, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclare(q, true, false, false, false, nil)
	var ae *amqp091.Error
	require.True(t, errors.As(err, &ae), "classic declare of a quorum queue: %v", err)
	require.Equal(t, amqp091.PreconditionFailed, ae.Code)
	require.Contains(t, ae.Reason, "x-queue-type")
}

func TestHoldETA(t *testing.T) {
	ctx := harness.Ctx(t, 60*time.Second)
	q := harness.Name("echo-eta")
	w := startWorker(t, Config{Queue: q, QueueType: "quorum", Channels: 1, Prefetch: 10, HoldETA: true, Record: true})
	c := newTaskClient(t)
	start := time.Now()
	c.send(ctx, "", q, "eta-1", "tasks.echo", []any{1}, amqp091.Table{"eta": FormatETA(start.Add(2 * time.Second))})
	// A naive eta in the past is UTC and not held.
	c.send(ctx, "", q, "eta-past", "tasks.echo", []any{2}, amqp091.Table{"eta": time.Now().UTC().Add(-time.Hour).Format("2006-01-02T15:04:05.000000")})
	s := c.must(10 * time.Second)
	require.Equal(t, "eta-past", s.TaskID)
	require.Less(t, s.At.Sub(start), time.Second)
	s = c.must(10 * time.Second)
	took := s.At.Sub(start)
	t.Logf("2 s ETA task answered after %s", took)
	require.Equal(t, "eta-1", s.TaskID)
	require.GreaterOrEqual(t, took, 1900*time.Millisecond)
	require.Less(t, took, 3500*time.Millisecond)
	requireProcessed(t, w, 2)
}

// TestHeldTasksTakePrefetch: 10 held ETA tasks fill a prefetch of 10, so a
// plain task behind them waits for their ETA; with a prefetch of 20 it
// does not.
func TestHeldTasksTakePrefetch(t *testing.T) {
	for _, tc := range []struct {
		prefetch int
		wait     bool
	}{{10, true}, {20, false}} {
		t.Run(fmt.Sprintf("prefetch%d", tc.prefetch), func(t *testing.T) {
			ctx := harness.Ctx(t, 60*time.Second)
			q := harness.Name("echo-held", fmt.Sprint(tc.prefetch))
			w := startWorker(t, Config{Queue: q, QueueType: "quorum", Channels: 1, Prefetch: tc.prefetch, HoldETA: true})
			c := newTaskClient(t)
			eta := FormatETA(time.Now().Add(2500 * time.Millisecond))
			for i := 0; i < 10; i++ {
				c.send(ctx, "", q, fmt.Sprintf("held-%d", i), "tasks.echo", []any{i}, amqp091.Table{"eta": eta})
			}
			// Let the worker take the 10 before the plain task is queued.
			time.Sleep(300 * time.Millisecond)
			sent := time.Now()
			c.send(ctx, "", q, "plain", "tasks.echo", []any{"x"}, nil)
			var plainAt time.Time
			for i := 0; i < 11; i++ {
				s := c.must(10 * time.Second)
				if s.TaskID == "plain" {
					plainAt = s.At
				}
			}
			waited := plainAt.Sub(sent)
			t.Logf("prefetch %d: plain task behind 10 held tasks answered after %s", tc.prefetch, waited)
			if tc.wait {
				require.GreaterOrEqual(t, waited, 1500*time.Millisecond)
			} else {
				require.Less(t, waited, 500*time.Millisecond)
			}
			requireProcessed(t, w, 11)
		})
	}
}

// TestRetry runs echo.retry [2, countdown] on a quorum queue on a topic
// exchange with native delayed delivery declared.
func TestRetry(t *testing.T) {
	for _, tc := range []struct {
		name         string
		viaDefault   bool    // publish to "" (as stalk does) instead of the queue's exchange (as Python does)
		defaultQueue bool    // the app's task_default_queue is the worker's queue
		countdown    float64 // seconds
		hops         string  // how the two retries arrive: "delayed" or "direct"
	}{
		// The app routes the task to this queue: both retries go through
		// celery_delayed_27.
		{"own-exchange-default-queue", false, true, 1, "delayed,delayed"},
		// The fixture's app (task_default_queue "celery", direct): a retry
		// of a task delivered through a named exchange is published
		// straight back to it, with an eta the worker holds.
		{"own-exchange", false, false, 1, "direct,direct"},
		// Delivered through "": the first retry is routed to the queue
		// itself, so delayed; the second was delivered through
		// celery_delayed_delivery, so goes straight back there.
		{"default-exchange", true, false, 1, "delayed,direct"},
		// The fixture's observation: on the queue's own exchange a 0.5 s
		// countdown works.
		{"own-exchange-half-second", false, false, 0.5, "direct,direct"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := harness.Ctx(t, 60*time.Second)
			q := harness.Name("echo-retry", tc.name)
			cfg := Config{Queue: q, QueueType: "quorum", Exchange: q, ExchangeType: "topic",
				Channels: 1, Prefetch: 10, HoldETA: true, Record: true}
			if tc.defaultQueue {
				cfg.DefaultQueue = q
			}
			require.NoError(t, harness.DeclareDelayedDelivery(ctx, harness.BrokerURL(),
				harness.CeleryQueue{Name: q, ExchangeType: "topic", Quorum: true}))
			w := startWorker(t, cfg)
			c := newTaskClient(t)
			id := "retry-" + tc.name
			exchange := q
			if tc.viaDefault {
				exchange = ""
			}
			start := time.Now()
			c.send(ctx, exchange, q, id, RetryTask, []any{2, tc.countdown}, nil)
			msg := fmt.Sprintf("Retry in %vs", tc.countdown)
			retry := fmt.Sprintf(`{"task_id": %q, "status": "RETRY", "result": {"exc_type": "Retry", "exc_message": [%q], "exc_module": "celery.exceptions"}, "traceback": null, "children": []}`, id, msg)
			require.Equal(t, retry, c.must(10*time.Second).Body)
			require.Equal(t, retry, c.must(10*time.Second).Body)
			s := c.must(10 * time.Second)
			took := s.At.Sub(start)
			t.Logf("SUCCESS after %s", took)
			require.Equal(t, fmt.Sprintf(`{"task_id": %q, "status": "SUCCESS", "result": 2, "traceback": null, "children": []}`, id), s.Body)
			require.GreaterOrEqual(t, took, time.Duration(2*tc.countdown*float64(time.Second))-100*time.Millisecond)
			require.Less(t, took, time.Duration(2*tc.countdown*float64(time.Second))+3*time.Second)

			rs := w.Receipts(id)
			require.Len(t, rs, 3)
			require.Equal(t, exchange, rs[0].Exchange)
			for i, hop := range strings.Split(tc.hops, ",") {
				r := rs[i+1]
				t.Logf("retry %d arrived through %q with key %q, %s after the previous receipt, eta %s", i+1, r.Exchange, r.RoutingKey, r.Received.Sub(rs[i].Received), r.ETA)
				require.Equal(t, int64(i+1), r.Retries)
				require.NotEmpty(t, r.ETA)
				require.Equal(t, id, r.Headers["parent_id"])
				requireOneDeath(t, r.Headers)
				eta, err := parseETA(r.ETA)
				require.NoError(t, err)
				early := eta.Sub(r.Received) // how long before its ETA it arrived
				switch hop {
				case "delayed":
					require.True(t, strings.HasPrefix(r.Exchange, "celery_delayed_"), r.Exchange)
					require.Equal(t, harness.DelayedRoutingKey(int64(tc.countdown), q), r.RoutingKey)
					require.Less(t, early, 200*time.Millisecond)
				case "direct":
					// Straight back: it arrives at once and waits as a held ETA task.
					require.Equal(t, rs[i].Exchange, r.Exchange)
					require.Equal(t, rs[i].RoutingKey, r.RoutingKey)
					require.Greater(t, early, time.Duration(tc.countdown*float64(time.Second))-200*time.Millisecond)
				}
			}
			require.Equal(t, int64(2), w.Retried())
			requireProcessed(t, w, 1)
		})
	}
}

// requireOneDeath checks that a retry that went through delayed delivery
// carries only its own trip's x-death (a count of 1 per queue): the worker
// must not copy x-death headers into the message it republishes.
func requireOneDeath(t *testing.T, h amqp091.Table) {
	t.Helper()
	deaths, _ := h["x-death"].([]any)
	for _, d := range deaths {
		tbl, ok := d.(amqp091.Table)
		require.True(t, ok, "%v", d)
		require.EqualValues(t, 1, tbl["count"], "%v", tbl)
	}
}

// TestRetryRejected: a task delivered through "" to a queue on a topic
// exchange that retries with a 0.5 s countdown is rejected, as Celery
// 5.6.3 rejects it ("countdown must be a positive number"): no RETRY, no
// result.
func TestRetryRejected(t *testing.T) {
	ctx := harness.Ctx(t, 60*time.Second)
	q := harness.Name("echo-reject")
	require.NoError(t, harness.DeclareDelayedDelivery(ctx, harness.BrokerURL(),
		harness.CeleryQueue{Name: q, ExchangeType: "topic", Quorum: true}))
	w := startWorker(t, Config{Queue: q, QueueType: "quorum", Exchange: q, ExchangeType: "topic",
		Channels: 1, Prefetch: 10, HoldETA: true})
	c := newTaskClient(t)
	c.send(ctx, "", q, "reject-1", RetryTask, []any{2, 0.5}, nil)
	if s, ok := c.next(3 * time.Second); ok {
		t.Fatalf("unexpected result %s", s.Body)
	}
	require.Equal(t, int64(1), w.Dropped())
	require.Equal(t, int64(0), w.Retried())
	require.Equal(t, int64(0), w.Processed())
}
