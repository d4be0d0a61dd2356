// Package fault injects faults into a real RabbitMQ with real Celery
// workers running: killed connections, broker restarts, a worker killed
// mid-task, deleted reply queues, malformed and orphan result messages, a
// memory alarm, TLS and refused credentials. It takes the broker lock
// exclusively, so no other broker test package runs beside it.
package fault

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
)

// Queues consumed by the workers started in TestMain.
var (
	transientQ string // results published transient (Celery's default)
	persistQ   string // results published persistent (result_persistent=True)
	lateQ      string // two single-process workers with prefetch 1, for acks_late
	lateW      []*harness.Worker
	// Workers of their own for long tasks, so that they never hold up the
	// short ones: transient and persistent results.
	transientSlowQ, persistSlowQ string
)

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, harness.Exclusive, func() error {
		transientQ = harness.Name("fault-t")
		persistQ = harness.Name("fault-p")
		lateQ = harness.Name("fault-late")
		if _, err := harness.StartWorker(harness.WorkerConfig{Queue: transientQ, Concurrency: 4}); err != nil {
			return err
		}
		if _, err := harness.StartWorker(harness.WorkerConfig{Queue: persistQ, Concurrency: 2,
			Env: map[string]string{"STALK_RESULT_PERSISTENT": "1"}}); err != nil {
			return err
		}
		transientSlowQ = harness.Name("fault-ts")
		persistSlowQ = harness.Name("fault-ps")
		if _, err := harness.StartWorker(harness.WorkerConfig{Queue: transientSlowQ, Concurrency: 2}); err != nil {
			return err
		}
		if _, err := harness.StartWorker(harness.WorkerConfig{Queue: persistSlowQ, Concurrency: 2,
			Env: map[string]string{"STALK_RESULT_PERSISTENT": "1"}}); err != nil {
			return err
		}
		for range 2 {
			w, err := harness.StartWorker(harness.WorkerConfig{Queue: lateQ, Concurrency: 1,
				Env: map[string]string{"STALK_PREFETCH": "1"}})
			if err != nil {
				return err
			}
			lateW = append(lateW, w)
		}
		return nil
	}))
}

var modes = []amqp.ReplyMode{amqp.PerTask, amqp.Shared}

// dial connects a client named after the test, sending to transientQ unless
// opts say otherwise. Its connections are named <name>-results and
// <name>-publish.
func dial(t testing.TB, name string, opts ...amqp.Option) *amqp.Client {
	t.Helper()
	return dialURL(t, harness.BrokerURL(), name, opts...)
}

// dialURL is dial to another broker URL (a proxy).
func dialURL(t testing.TB, brokerURL, name string, opts ...amqp.Option) *amqp.Client {
	t.Helper()
	base := []amqp.Option{amqp.WithDefaultQueue(transientQ), amqp.WithResultExpires(2 * time.Minute)}
	return harness.DialURL(t, brokerURL, name, 30*time.Second, append(base, opts...)...)
}

// rawConn opens a plain amqp091 connection, for injecting messages and
// deleting queues behind the client's back.
func rawConn(t testing.TB) *amqp091.Connection {
	t.Helper()
	conn, err := amqp091.DialConfig(harness.BrokerURL(), amqp091.Config{Dial: amqp091.DefaultDial(10 * time.Second)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// brokerUp waits until the broker accepts AMQP connections again.
func brokerUp(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := harness.Reachable(2 * time.Second)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("broker not up after %s: %w", d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var watchdogOnce sync.Once

// restartGuard makes sure the broker app is running again when the test
// ends, whatever happened. Call it before stop_app.
//
// If the test binary itself is killed (a go test -timeout, a ^C) between
// stop_app and start_app, no cleanup runs; for that, a watchdog process of
// its own session waits for this process to exit, then starts the app if
// it is stopped.
func restartGuard(t testing.TB) {
	watchdogOnce.Do(func() {
		script := fmt.Sprintf("while kill -0 %d 2>/dev/null; do sleep 1; done; "+
			"rabbitmqctl -q await_startup -t 1 >/dev/null 2>&1 || rabbitmqctl -q start_app", os.Getpid())
		cmd := exec.Command("sh", "-c", script)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Logf("restart watchdog: %v", err)
			return
		}
		go func() { _ = cmd.Wait() }()
	})
	t.Cleanup(func() {
		if err := harness.Reachable(2 * time.Second); err == nil {
			return
		}
		out, err := harness.Rabbitmqctl("start_app")
		if err != nil {
			t.Errorf("cleanup start_app: %v: %s", err, out)
		}
		if err := brokerUp(60 * time.Second); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}
