package echoworker

import (
	"encoding/json"
	"os"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/integration/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m, harness.Shared)) }

func TestAppendResultBody(t *testing.T) {
	got := AppendResultBody(nil, "b4ff2cdd-3091-4443-ba7f-440916158df4", json.RawMessage(`5`))
	require.Equal(t, `{"task_id": "b4ff2cdd-3091-4443-ba7f-440916158df4", "status": "SUCCESS", "result": 5, "traceback": null, "children": []}`, string(got))
}

func TestEchoResult(t *testing.T) {
	for body, want := range map[string]string{
		`[[7], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`:      `7`,
		`[[1,2],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]`:             `[1,2]`,
		`[[], {"x": 1}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`: `[]`,
	} {
		got, ok := echoResult([]byte(body))
		require.True(t, ok, body)
		require.Equal(t, want, string(got))
	}
	for _, body := range []string{`{"args": [1]}`, `[[1], {}]`, `not json`} {
		_, ok := echoResult([]byte(body))
		require.False(t, ok, body)
	}
}

// TestWorkerRepliesLikeCelery checks a result's properties and body against
// what a Celery 5 worker publishes, and that an empty reply_to gets nothing.
func TestWorkerRepliesLikeCelery(t *testing.T) {
	ctx := harness.Ctx(t, 60*time.Second)
	queue, reply := harness.Name("echo"), harness.Name("echo-reply")
	w, err := Start(ctx, Config{URL: harness.BrokerURL(), Queue: queue, Channels: 2, Prefetch: 8})
	require.NoError(t, err)
	t.Cleanup(w.Stop)

	conn, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = ch.QueueDelete(reply, false, false, false)
		_, _ = ch.QueueDelete(queue, false, false, false)
	})
	_, err = ch.QueueDeclare(reply, false, false, true, false, nil)
	require.NoError(t, err)
	d, err := ch.Consume(reply, "", true, false, false, false, nil)
	require.NoError(t, err)

	send := func(id, replyTo string, arg int) {
		body, _ := json.Marshal([]any{[]any{arg}, map[string]any{}, map[string]any{"callbacks": nil, "errbacks": nil, "chain": nil, "chord": nil}})
		require.NoError(t, ch.PublishWithContext(ctx, "", queue, false, false, amqp091.Publishing{
			ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: 2,
			CorrelationId: id, ReplyTo: replyTo, Body: body,
			Headers: amqp091.Table{"lang": "py", "task": "tasks.echo", "id": id, "retries": int32(0)},
		}))
	}
	send("silent-1", "", 1)
	send("task-2", reply, 42)

	select {
	case m := <-d:
		require.Equal(t, "task-2", m.CorrelationId)
		require.Equal(t, "application/json", m.ContentType)
		require.Equal(t, "utf-8", m.ContentEncoding)
		require.Equal(t, uint8(1), m.DeliveryMode)
		require.Equal(t, uint8(0), m.Priority)
		require.Equal(t, "", m.Exchange)
		require.Equal(t, reply, m.RoutingKey)
		require.Empty(t, m.Headers)
		require.Equal(t, `{"task_id": "task-2", "status": "SUCCESS", "result": 42, "traceback": null, "children": []}`, string(m.Body))
	case <-ctx.Done():
		t.Fatal("no result")
	}
	require.Eventually(t, func() bool { return w.Dropped() == 1 && w.Processed() == 1 }, 10*time.Second, 10*time.Millisecond)
	select {
	case m := <-d:
		t.Fatalf("unexpected second result %s", m.Body)
	case <-time.After(200 * time.Millisecond):
	}
	require.NoError(t, w.Err())
}

// TestConfirmResults: with ConfirmResults the worker tells, per task, a
// result the broker accepted from one it returned as unroutable.
func TestConfirmResults(t *testing.T) {
	ctx := harness.Ctx(t, 60*time.Second)
	var mu sync.Mutex
	got := map[string]string{}
	q := harness.Name("echo-confirm")
	startWorker(t, Config{Queue: q, Channels: 1, Prefetch: 4, ConfirmResults: true, OnResult: func(id, outcome string) {
		mu.Lock()
		got[id] = outcome
		mu.Unlock()
	}})
	c := newTaskClient(t)
	c.send(ctx, "", q, "confirm-ok", "tasks.echo", []any{1}, nil)
	require.Equal(t, "confirm-ok", c.must(10*time.Second).TaskID)
	// A reply queue that does not exist: the result is returned, then acked.
	reply := c.reply
	c.reply = harness.Name("echo-no-such-reply")
	c.send(ctx, "", q, "confirm-unroutable", "tasks.echo", []any{2}, nil)
	c.reply = reply
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	}, 10*time.Second, 10*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, "acked", got["confirm-ok"])
	require.Equal(t, "returned 312 NO_ROUTE, acked", got["confirm-unroutable"])
}
