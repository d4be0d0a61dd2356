package revoketest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/integration/harness"
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

// ---- a minimal Celery protocol v2 sender, for the tests only ---------------

// taskResult is one message from a task's reply queue.
type taskResult struct {
	Status string          `json:"status"`
	Result json.RawMessage `json:"result"`
	TaskID string          `json:"task_id"`
}

// sentTask is a task published by send, with the states the worker
// reported for it.
type sentTask struct {
	ID     string
	states chan taskResult
}

// send publishes a Celery protocol v2 task to the suite's queue, after
// declaring and consuming a reply queue of its own (durable, x-expires)
// so that no state is lost. The connection closes at the end of the test.
func send(t *testing.T, task string, args []any, countdown time.Duration) *sentTask {
	t.Helper()
	conn, err := amqp091.DialConfig(harness.BrokerURL(), amqp091.Config{
		Properties: amqp091.Table{"connection_name": harness.Name("revoke-sender", t.Name())},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })

	id := uuid.NewString()
	reply := harness.Name("revoke-reply", id)
	cch, err := conn.Channel()
	require.NoError(t, err)
	_, err = cch.QueueDeclare(reply, true, false, false, false, amqp091.Table{"x-expires": int32(60000)})
	require.NoError(t, err)
	deliveries, err := cch.Consume(reply, "", true, false, false, false, nil)
	require.NoError(t, err)
	st := &sentTask{ID: id, states: make(chan taskResult, 16)}
	go func() {
		for d := range deliveries {
			var r taskResult
			if json.Unmarshal(d.Body, &r) == nil {
				select {
				case st.states <- r:
				default:
				}
			}
		}
	}()

	pch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, pch.Confirm(false))
	var eta any
	if countdown > 0 {
		eta = time.Now().UTC().Add(countdown).Format("2006-01-02T15:04:05.000000+00:00")
	}
	if args == nil {
		args = []any{}
	}
	body, err := json.Marshal([]any{args, map[string]any{},
		map[string]any{"callbacks": nil, "errbacks": nil, "chain": nil, "chord": nil}})
	require.NoError(t, err)
	argsrepr, _ := json.Marshal(args)
	headers := amqp091.Table{
		"lang": "py", "task": task, "id": id, "shadow": nil, "eta": eta, "expires": nil,
		"group": nil, "group_index": nil, "retries": int32(0), "timelimit": []any{nil, nil},
		"root_id": id, "parent_id": nil, "argsrepr": string(argsrepr), "kwargsrepr": "{}",
		"origin": "gen0@stalk-revoketest", "ignore_result": false,
	}
	ctx := harness.Ctx(t, 10*time.Second)
	dc, err := pch.PublishWithDeferredConfirmWithContext(ctx, "", taskQueue, false, false, amqp091.Publishing{
		ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp091.Persistent,
		CorrelationId: id, ReplyTo: reply, Headers: headers, Body: body,
	})
	require.NoError(t, err)
	ok, err := dc.WaitContext(ctx)
	require.NoError(t, err)
	require.True(t, ok, "broker nacked the task")
	return st
}

// waitState waits for the task to report state, skipping the states
// before it, and fails the test if another ready state comes first.
func (s *sentTask) waitState(t *testing.T, state string, within time.Duration) taskResult {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case r := <-s.states:
			if r.Status == state {
				return r
			}
			switch r.Status {
			case "SUCCESS", "FAILURE", "REVOKED":
				t.Fatalf("task %s: got %s (%s), want %s", s.ID, r.Status, r.Result, state)
			}
		case <-timer.C:
			t.Fatalf("task %s: no %s within %s", s.ID, state, within)
		}
	}
}

// revokedReason returns the TaskRevokedError message of a REVOKED result:
// "revoked", "terminated" or "expired".
func revokedReason(t *testing.T, r taskResult) string {
	t.Helper()
	var e struct {
		Type    string `json:"exc_type"`
		Message []any  `json:"exc_message"`
	}
	require.NoError(t, json.Unmarshal(r.Result, &e), "REVOKED result %s", r.Result)
	require.Equal(t, "TaskRevokedError", e.Type)
	require.NotEmpty(t, e.Message)
	return fmt.Sprint(e.Message[0])
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
