package core

import (
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
)

// The routing and message options reach a real worker as Celery's own
// client would send them: a named exchange and routing key, extra headers
// (which Celery turns into request attributes), an ETA, time limits and a
// shadow name.
func TestSendRoutingAndHeaders(t *testing.T) {
	ctx := harness.Ctx(t, 60*time.Second)
	ex, key := harness.Name("core-exchange"), harness.Name("core-key")
	conn, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.ExchangeDeclare(ex, "direct", false, true, false, false, nil))
	require.NoError(t, ch.QueueBind(queue, key, ex, false, nil))
	t.Cleanup(func() {
		_ = ch.QueueUnbind(queue, key, ex, nil)
		_ = ch.ExchangeDelete(ex, false, false)
	})

	forModes(t, func(t *testing.T, c *amqp.Client) {
		eta := time.Now().Add(1500 * time.Millisecond)
		r, err := c.Send(ctx, "tasks.request_info", amqp.Args("tenant", "shadow", "timelimit", "eta"),
			amqp.Exchange(ex), amqp.RoutingKey(key),
			amqp.Headers(map[string]any{"tenant": "acme"}),
			amqp.ETA(eta), amqp.TimeLimit(30*time.Second), amqp.SoftTimeLimit(20*time.Second),
			amqp.Shadow("reports.alias"))
		require.NoError(t, err)
		v, err := r.Get(ctx)
		require.NoError(t, err)
		assert.False(t, time.Now().Before(eta), "ran no earlier than its ETA")
		info := v.(map[string]any)
		assert.Equal(t, "acme", info["tenant"], "a custom header is a request attribute")
		assert.Equal(t, "reports.alias", info["shadow"])
		assert.Equal(t, []any{30.0, 20.0}, info["timelimit"])
		assert.NotNil(t, info["eta"])
		assert.Equal(t, map[string]any{"exchange": ex, "routing_key": key}, info["delivery_info"])
	})
}
