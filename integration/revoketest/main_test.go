package revoketest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

// The suite's two Celery workers consume the same queue, so either may run
// a task; pidbox commands reach both.
var (
	taskQueue = harness.Name("revoke")
	workerA   *harness.Worker
	workerB   *harness.Worker
	workerErr error
)

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, harness.Shared))
}

var startOnce sync.Once

// workers returns the suite's two workers, starting them on first use:
// harness.Main runs the tests under the broker lock and stops every
// worker at the end, so the workers start once per test binary, inside it.
func workers(t *testing.T) (a, b *harness.Worker) {
	t.Helper()
	startOnce.Do(func() {
		var wg sync.WaitGroup
		var errA, errB error
		wg.Add(2)
		go func() {
			defer wg.Done()
			workerA, errA = harness.StartWorker(harness.WorkerConfig{Queue: taskQueue, Name: "revoke-a-" + harness.RunID})
		}()
		go func() {
			defer wg.Done()
			workerB, errB = harness.StartWorker(harness.WorkerConfig{Queue: taskQueue, Name: "revoke-b-" + harness.RunID})
		}()
		wg.Wait()
		if errA != nil {
			workerErr = errA
		} else {
			workerErr = errB
		}
	})
	require.NoError(t, workerErr, "start the suite's Celery workers")
	return workerA, workerB
}

// controller dials a Controller for one test and closes it at the end.
func controller(t *testing.T) *revoke.Controller {
	t.Helper()
	ctx := harness.Ctx(t, 20*time.Second)
	c, err := revoke.Dial(ctx, harness.BrokerURL(),
		revoke.WithLogger(testLogger(t)),
		revoke.WithConnectionName(harness.Name("revoke", t.Name())))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testLogger(t *testing.T) zerolog.Logger {
	if os.Getenv("STALK_TEST_LOG") == "" {
		return zerolog.Nop()
	}
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
}

// ---- tasks, sent with the amqp client ------------------------------------------

// client dials an amqp.Client for one test and closes it at the end. Its
// AsyncResult.Revoke goes through the Controller on the client's
// publishing connection.
func client(t *testing.T) *amqp.Client {
	t.Helper()
	ctx := harness.Ctx(t, 20*time.Second)
	cl, err := amqp.Dial(ctx, harness.BrokerURL(),
		amqp.WithLogger(testLogger(t)),
		amqp.WithResultExpires(time.Minute),
		amqp.WithReplyQueuePrefix(harness.Name("reply")+"."),
		amqp.WithConnectionName(harness.Name("revoke-client", t.Name())))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// send sends a task to the suite's queue.
func send(t *testing.T, cl *amqp.Client, task string, args []any, countdown time.Duration) *result.AsyncResult {
	t.Helper()
	ctx := harness.Ctx(t, 20*time.Second)
	opts := []amqp.SendOption{amqp.Args(args...), amqp.Queue(taskQueue)}
	if countdown > 0 {
		opts = append(opts, amqp.Countdown(countdown))
	}
	r, err := cl.Send(ctx, task, opts...)
	require.NoError(t, err)
	return r
}

// waitStarted waits until a worker reports the task STARTED.
func waitStarted(t *testing.T, r *result.AsyncResult) {
	t.Helper()
	require.Eventually(t, func() bool { return r.State() == result.Started }, 20*time.Second, 10*time.Millisecond,
		"task %s not started (state %s)", r.ID(), r.State())
}

// getRevoked waits for the task's result, which must be REVOKED, and
// returns the TaskRevokedError's message: "revoked", "terminated" or
// "expired".
func getRevoked(t *testing.T, r *result.AsyncResult) string {
	t.Helper()
	ctx := harness.Ctx(t, 20*time.Second)
	v, err := r.Get(ctx)
	require.Error(t, err, "task %s returned %v", r.ID(), v)
	require.ErrorIs(t, err, result.ErrRevoked)
	var te *result.TaskError
	require.ErrorAs(t, err, &te)
	assert.Equal(t, "TaskRevokedError", te.Type)
	assert.Equal(t, result.Revoked, r.State())
	return te.Message()
}

// replyFrom returns the reply of the named worker, failing if absent.
func replyFrom(t *testing.T, replies []revoke.Reply, worker string) revoke.Reply {
	t.Helper()
	for _, r := range replies {
		if r.Worker == worker {
			return r
		}
	}
	t.Fatalf("no reply from %s in %+v", worker, replies)
	return revoke.Reply{}
}

func workerNames(replies []revoke.Reply) []string {
	var ns []string
	for _, r := range replies {
		ns = append(ns, r.Worker)
	}
	return ns
}

// pidboxTap is an exclusive queue bound to celery.pidbox: it sees every
// control message published on the broker, ours and other runs'.
type pidboxTap struct {
	deliveries <-chan amqp091.Delivery
}

func tap(t *testing.T) *pidboxTap {
	t.Helper()
	conn, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.ExchangeDeclare("celery.pidbox", "fanout", false, false, false, false, nil))
	q, err := ch.QueueDeclare(harness.Name("revoke-tap", t.Name()), false, true, true, false, nil)
	require.NoError(t, err)
	require.NoError(t, ch.QueueBind(q.Name, "", "celery.pidbox", false, nil))
	d, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	require.NoError(t, err)
	return &pidboxTap{deliveries: d}
}

// next returns the next control message whose destination includes one
// of the markers, skipping everyone else's.
func (p *pidboxTap) next(ctx context.Context, markers ...string) (amqp091.Delivery, map[string]any, error) {
	for {
		select {
		case d, ok := <-p.deliveries:
			if !ok {
				return d, nil, fmt.Errorf("tap closed")
			}
			var body map[string]any
			if json.Unmarshal(d.Body, &body) != nil {
				continue
			}
			dest, _ := body["destination"].([]any)
			for _, x := range dest {
				for _, m := range markers {
					if x == m {
						return d, body, nil
					}
				}
			}
		case <-ctx.Done():
			return amqp091.Delivery{}, nil, ctx.Err()
		}
	}
}
