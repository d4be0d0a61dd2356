package revoke

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The arguments of each control command, as Celery's worker reads them
// (celery/worker/control.py: the handler's keyword arguments).
func TestControlArguments(t *testing.T) {
	enc := func(v any, err error) string {
		t.Helper()
		require.NoError(t, err)
		b, err := json.Marshal(v)
		require.NoError(t, err)
		return string(b)
	}
	assert.JSONEq(t, `{"task_name": "tasks.add", "rate_limit": "10/m"}`, enc(rateLimitArgs("tasks.add", "10/m")))
	assert.JSONEq(t, `{"task_name": "tasks.add", "rate_limit": ""}`, enc(rateLimitArgs("tasks.add", "")), "an empty rate removes the limit")
	assert.JSONEq(t, `{"task_name": "tasks.slow", "soft": 1.5, "hard": null}`, enc(timeLimitArgs("tasks.slow", 1500*time.Millisecond, 0)))
	assert.JSONEq(t, `{"task_name": "tasks.slow", "soft": 1, "hard": 2}`, enc(timeLimitArgs("tasks.slow", time.Second, 2*time.Second)))
	assert.JSONEq(t, `{"queue": "q1", "exchange": null, "exchange_type": null, "routing_key": null}`, enc(addConsumerArgs(ConsumerQueue{Name: "q1"})))
	assert.JSONEq(t, `{"queue": "q1", "exchange": "ex", "exchange_type": "topic", "routing_key": "a.#", "queue_arguments": {"x-queue-type": "quorum"}}`,
		enc(addConsumerArgs(ConsumerQueue{Name: "q1", Exchange: "ex", ExchangeType: "topic", RoutingKey: "a.#", Arguments: map[string]any{"x-queue-type": "quorum"}})))
	assert.JSONEq(t, `{"n": 2}`, enc(poolArgs("pool_grow", 2)))
	assert.JSONEq(t, `{"max": 4, "min": 1}`, enc(autoscaleArgs(4, 1)))
}

func TestControlInvalidBeforePublishing(t *testing.T) {
	c := bare(t) // no connection: anything that got as far as publishing would fail otherwise
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"rate no task":    func() error { _, err := c.RateLimit(ctx, "", "1/s"); return err },
		"rate bad":        func() error { _, err := c.RateLimit(ctx, "tasks.add", "fast"); return err },
		"rate bad unit":   func() error { _, err := c.RateLimit(ctx, "tasks.add", "1/d"); return err },
		"time no task":    func() error { _, err := c.TimeLimit(ctx, "", time.Second, 0); return err },
		"time negative":   func() error { _, err := c.TimeLimit(ctx, "t", -time.Second, 0); return err },
		"time soft>hard":  func() error { _, err := c.TimeLimit(ctx, "t", 3*time.Second, time.Second); return err },
		"add no queue":    func() error { _, err := c.AddConsumer(ctx, ConsumerQueue{}); return err },
		"add bad type":    func() error { _, err := c.AddConsumer(ctx, ConsumerQueue{Name: "q", ExchangeType: "x"}); return err },
		"cancel no queue": func() error { _, err := c.CancelConsumer(ctx, ""); return err },
		"grow zero":       func() error { _, err := c.PoolGrow(ctx, 0); return err },
		"shrink negative": func() error { _, err := c.PoolShrink(ctx, -1); return err },
		"autoscale min>max": func() error {
			_, err := c.Autoscale(ctx, 1, 2)
			return err
		},
		"broadcast no method": func() error { _, err := c.Broadcast(ctx, "", nil); return err },
		"terminate":           func() error { _, err := c.EnableEvents(ctx, Terminate()); return err },
		"query no ids":        func() error { _, err := c.QueryTask(ctx, nil); return err },
		"query empty id":      func() error { _, err := c.QueryTask(ctx, []string{" "}); return err },
	} {
		err := call()
		assert.True(t, errors.Is(err, ErrInvalidArgument), "%s: %v", name, err)
	}
	for _, ok := range []string{"", "10", "10/s", "2.5/m", "100/h", "10/sec"} {
		_, err := rateLimitArgs("t", ok)
		assert.NoError(t, err, ok)
	}
}

func TestTaskQueryDecodes(t *testing.T) {
	var got map[string]TaskQuery
	require.NoError(t, json.Unmarshal([]byte(`{"id1": ["active", {"id": "id1", "name": "tasks.slow", "args": [5], "kwargs": {}, "time_start": 1700000000.5}]}`), &got))
	require.Contains(t, got, "id1")
	assert.Equal(t, "active", got["id1"].State)
	assert.Equal(t, "tasks.slow", got["id1"].Info.Name)
	assert.Equal(t, int64(1700000000), got["id1"].Info.Started().Unix())
	assert.Error(t, json.Unmarshal([]byte(`{"id1": ["active"]}`), &got))
}
