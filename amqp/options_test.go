package amqp

import (
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/result"
)

func configOf(opts ...Option) config {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

func TestOptionsConflict(t *testing.T) {
	bad := map[string][]Option{
		"named shared queue in per-task mode": {WithReplyMode(PerTask), WithReplyQueue("q")},
		"lanes in shared mode":                {WithReplyMode(Shared), WithLanes(4)},
		"lanes with a shared queue name":      {WithReplyQueue("q"), WithLanes(4)},
		"quorum queue with x-max-priority":    {WithTaskQueues(TaskQueue{Name: "q", Type: Quorum, Arguments: map[string]any{"x-max-priority": 5}})},
		"x-queue-type as an argument":         {WithTaskQueues(TaskQueue{Name: "q", Arguments: map[string]any{"x-queue-type": "quorum"}})},
		"unknown exchange type":               {WithTaskQueues(TaskQueue{Name: "q", ExchangeType: "fan"})},
		"unknown queue type":                  {WithDefaultQueueType("stream")},
		"queue listed twice":                  {WithTaskQueues(TaskQueue{Name: "q"}, TaskQueue{Name: "q"})},
		"empty default queue":                 {WithDefaultQueue("")},
		"lifetime over x-expires":             {WithResultExpires(30 * 24 * 3600e9)},
		"long reply prefix":                   {WithReplyQueuePrefix(strings.Repeat("p", 220))},
	}
	for name, opts := range bad {
		t.Run(name, func(t *testing.T) {
			cfg := configOf(opts...)
			err := cfg.validate()
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidOption)
		})
	}
	cfg := configOf(WithReplyQueuePrefix(strings.Repeat("p", 220)))
	assert.ErrorContains(t, cfg.validate(), "reply queue prefix is 220 bytes; with 36 more")

	// WithReplyQueue alone implies shared mode; so does naming the mode.
	for _, opts := range [][]Option{{WithReplyQueue("q")}, {WithReplyQueue("q"), WithReplyMode(Shared)}, {WithReplyMode(Shared), WithReplyQueue("q")}} {
		cfg := configOf(opts...)
		require.NoError(t, cfg.validate())
		assert.Equal(t, Shared, cfg.mode)
	}
	ok := configOf(WithTaskQueues(TaskQueue{Name: "q", ExchangeType: TopicExchange, Type: Quorum}))
	require.NoError(t, ok.validate())
}

func TestDecodeTaskTables(t *testing.T) {
	h := amqp091.Table{"task": "t", "id": "i", "stamps": amqp091.Table{"s": "v"}, "retries": int32(2)}
	tm, err := DecodeTask(h, "application/json", "utf-8", []byte(`[[1], {}, {}]`))
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"s": "v"}, tm.Stamps)
	assert.Equal(t, 2, tm.Retries)
	_, err = DecodeTask(nil, "application/json", "utf-8", []byte(`[[1], {}, {}]`))
	assert.ErrorIs(t, err, result.ErrMalformed)
}
