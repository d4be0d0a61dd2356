package otel

import (
	"os"
	"testing"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
)

// queue is the run's task queue, consumed by a real Celery worker.
var queue string

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, harness.Shared, func() error {
		queue = harness.Name("otel")
		_, err := harness.StartWorker(harness.WorkerConfig{Queue: queue, Concurrency: 2})
		return err
	}))
}

func dial(t testing.TB, opts ...amqp.Option) *amqp.Client {
	return harness.Dial(t, "otel", queue, opts...)
}
