// Package canvas tests chains, groups, result sets and task graphs against
// real Celery 5 workers.
package canvas

import (
	"os"
	"testing"

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

// forModes runs fn once per reply mode, each with its own client.
func forModes(t *testing.T, fn func(t *testing.T, c *amqp.Client)) {
	harness.ForModes(t, dial, fn)
}

func dial(t testing.TB, opts ...amqp.Option) *amqp.Client {
	return harness.Dial(t, "canvas", queue, append([]amqp.Option{amqp.WithReplyQueuePrefix(harness.Name("canvas-reply") + ".")}, opts...)...)
}
