// Package canvas tests chains, groups, result sets and task graphs against
// real Celery 5 workers.
package canvas

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
)

// queue is the run's own task queue, consumed by worker. The default
// "celery" queue has no worker of ours: a step routed there would be lost.
var (
	queue  string
	worker *harness.Worker
)

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, harness.Shared, func() error {
		queue = harness.Name("canvas")
		w, err := harness.StartWorker(harness.WorkerConfig{Queue: queue, Concurrency: 4})
		if err != nil {
			return err
		}
		worker = w
		return nil
	}))
}

var modes = []amqp.ReplyMode{amqp.PerTask, amqp.Shared}

// forModes runs fn once per reply mode, each with its own client.
func forModes(t *testing.T, fn func(t *testing.T, c *amqp.Client)) {
	for _, m := range modes {
		t.Run(m.String(), func(t *testing.T) {
			fn(t, dial(t, amqp.WithReplyMode(m)))
		})
	}
}

func dial(t testing.TB, opts ...amqp.Option) *amqp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := []amqp.Option{
		amqp.WithDefaultQueue(queue),
		amqp.WithResultExpires(10 * time.Minute),
		amqp.WithReplyQueuePrefix(harness.Name("canvas-reply") + "."),
		amqp.WithConnectionName(fmt.Sprintf("%s-%s", harness.Name("canvas"), t.Name())),
		amqp.WithLogger(zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)),
	}
	c, err := amqp.Dial(ctx, harness.BrokerURL(), append(base, opts...)...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
