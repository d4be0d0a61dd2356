package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/integration/harness"
)

// ctlMu serialises the tests that change ctlWorker.
var ctlMu sync.Mutex

// stalkIn runs the binary with stdin.
func stalkIn(t *testing.T, ctx context.Context, stdin string, args ...string) out {
	t.Helper()
	cmd := command(ctx, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	o := out{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		o.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run stalk %v: %v", args, err)
	}
	t.Logf("stalk %s → %s", strings.Join(args, " "), o)
	return o
}

// callOn is call with the given queue instead of the run's.
func callOn(t *testing.T, ctx context.Context, q, task string, args ...string) out {
	t.Helper()
	full := append([]string{"call", task}, args...)
	full = append(full, "-q", q)
	return stalk(t, ctx, append(full, replyArgs()...)...)
}

func TestCLIVersion(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Second)
	o := stalk(t, ctx, "--version")
	require.Equal(t, 0, o.code, o)
	assert.Empty(t, o.stderr)
	assert.Regexp(t, `^stalk (\(devel\)|v\S+)( revision [0-9a-f]{12}, \S+(, modified)?)? \(go\S+\)\n$`, o.stdout)
	if vcsStamped {
		head, err := exec.Command("git", "-C", moduleRoot(), "rev-parse", "HEAD").Output()
		if err == nil {
			assert.Contains(t, o.stdout, "revision "+string(head[:12]), "the revision of the checkout it was built from")
		}
	}
	o = stalk(t, ctx, "-j", "--version")
	require.Equal(t, 0, o.code, o)
	l := jsonLines(t, o.stdout)
	assert.NotEmpty(t, l[0]["version"])
	assert.NotEmpty(t, l[0]["go"])
}

// TestCLIExitCodes checks the contract of cmd/stalk/cli.go against the
// real binary: 0, 1, 2, 3, 4 and 130, and the --json error object of each
// error.
func TestCLIExitCodes(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	cases := []struct {
		name string
		args []string
		code int
		kind string // the --json error's "error", "" when none is printed
	}{
		{"ok", []string{"call", "tasks.add", "1", "2", "-q", queue}, 0, ""},
		{"task failed", []string{"call", "tasks.boom", "x", "-q", queue}, 1, ""},
		{"no worker replied", []string{"ping", "-d", "nobody@nowhere", "-t", "0.3"}, 1, "failed"},
		{"usage", []string{"call", "tasks.add", "--bogus"}, 2, "usage"},
		{"timeout", []string{"call", "tasks.slow", "2", "-q", queue, "-t", "0.3"}, 3, "timeout"},
		{"broker", []string{"--broker", "amqp://guest:guest@127.0.0.1:1//", "--connect-timeout", "0.3", "status"}, 4, "broker"},
	}
	for _, c := range cases {
		args := append(append([]string(nil), c.args...), replyArgs()...)
		if c.args[0] != "call" {
			args = c.args
		}
		o := stalk(t, ctx, args...)
		assert.Equal(t, c.code, o.code, "%s: %s", c.name, o)
		o = stalk(t, ctx, append([]string{"--json"}, args...)...)
		assert.Equal(t, c.code, o.code, "%s --json: %s", c.name, o)
		if c.kind == "" {
			continue
		}
		lines := jsonLines(t, o.stdout)
		last := lines[len(lines)-1]
		assert.Equal(t, "error", last["event"], c.name)
		assert.Equal(t, c.kind, last["error"], c.name)
		assert.Equal(t, json.Number(itoa(c.code)), last["exit_code"], c.name)
	}

	// 130: interrupted while waiting, with the JSON error as the closing
	// line.
	cmd := command(ctx, append([]string{"--json", "call", "tasks.slow", "20", "-q", queue}, replyArgs()...)...)
	var stdout strings.Builder
	stderr := &harness.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	require.NoError(t, cmd.Start())
	time.Sleep(1500 * time.Millisecond) // sent and waiting
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err := cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, stderr.String())
	assert.Equal(t, 130, ee.ExitCode(), stderr.String())
	lines := jsonLines(t, stdout.String())
	assert.Equal(t, "sent", lines[0]["event"])
	assert.Equal(t, "interrupted", lines[len(lines)-1]["error"])
	if id, ok := lines[0]["id"].(string); ok {
		stalk(t, ctx, "revoke", id, "--terminate", "-d", worker.Hostname)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestCLIStatus(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	o := stalk(t, ctx, "status", "-t", "2")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "-> "+worker.Hostname+": OK\n")
	assert.Regexp(t, `(?m)^\n?\d+ nodes? online\.$`, o.stdout)
	o = stalk(t, ctx, "status", "-d", worker.Hostname+","+ctlWorker.Hostname)
	require.Equal(t, 0, o.code, o)
	assert.True(t, strings.HasSuffix(o.stdout, "\n2 nodes online.\n"), o.stdout)
	o = stalk(t, ctx, "-j", "status", "-d", worker.Hostname)
	require.Equal(t, 0, o.code, o)
	l := jsonLines(t, o.stdout)
	require.Len(t, l, 1)
	assert.Equal(t, worker.Hostname, l[0]["worker"])
	assert.Equal(t, "pong", l[0]["ok"])
	o = stalk(t, ctx, "status", "-d", "nobody@nowhere", "-t", "0.3")
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stderr, "no worker replied within 300ms")
}

// TestCLIInspectEveryMethod runs each inspect method against a real
// worker, with something for it to report.
func TestCLIInspectEveryMethod(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 90*time.Second)
	d := []string{"-d", worker.Hostname, "-t", "3"}
	inspect := func(args ...string) out {
		return stalk(t, ctx, append(append([]string{"inspect"}, args...), d...)...)
	}
	// A running task and a task held for its countdown.
	running := strings.TrimSpace(call(t, ctx, "tasks.slow", "20", "--no-wait").stdout)
	held := strings.TrimSpace(call(t, ctx, "tasks.add", "1", "1", "--countdown", "60", "--no-wait").stdout)
	t.Cleanup(func() {
		stalk(t, context.Background(), "revoke", running, held, "--terminate", "-d", worker.Hostname)
	})
	require.Eventually(t, func() bool {
		return strings.Contains(inspect("active").stdout, "tasks.slow["+running+"]")
	}, 20*time.Second, 300*time.Millisecond)

	o := inspect("active")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "-> "+worker.Hostname+": OK\n")
	assert.Regexp(t, `\* tasks\.slow\[`+running+`\] args=\[20\] running \d`, o.stdout)
	assert.True(t, strings.HasSuffix(o.stdout, "\n1 node online.\n"), o.stdout)

	require.Eventually(t, func() bool {
		return strings.Contains(inspect("scheduled").stdout, "tasks.add["+held+"]")
	}, 20*time.Second, 300*time.Millisecond)
	assert.Regexp(t, `tasks\.add\[`+held+`\] args=\[1, ?1\].* eta 20\d\d-`, inspect("scheduled").stdout)

	o = inspect("reserved")
	require.Equal(t, 0, o.code, o)

	o = inspect("query_task", running, held)
	require.Equal(t, 0, o.code, o)
	assert.Regexp(t, `active tasks\.slow\[`+running+`\]`, o.stdout)

	o = inspect("registered")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "    * tasks.add\n")
	o = inspect("registered", "rate_limit", "acks_late")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "* tasks.slow_late [acks_late=True]", "attributes that are set are shown")

	o = inspect("stats")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, `"max-concurrency": 4`)

	o = inspect("active_queues")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "* "+queue+" exchange="+queue+"(direct) key="+queue)

	o = inspect("conf")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, `"result_backend": "rpc:///"`)
	assert.NotContains(t, o.stdout, "guest:guest", "the worker masks the broker password")
	o = inspect("conf", "maybe")
	assert.Equal(t, 2, o.code, o)

	o = inspect("report")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "celery:"+harness.CeleryVersion())

	o = inspect("ping")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "    pong\n")

	o = inspect("clock")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, `"clock":`)

	o = inspect("revoked")
	require.Equal(t, 0, o.code, o)

	// --json: one line per worker, the raw reply.
	o = stalk(t, ctx, append([]string{"--json", "inspect", "active_queues"}, d...)...)
	require.Equal(t, 0, o.code, o)
	l := jsonLines(t, o.stdout)
	require.Len(t, l, 1)
	assert.Equal(t, "active_queues", l[0]["method"])
	assert.Equal(t, queue, l[0]["reply"].([]any)[0].(map[string]any)["name"])

	// A method workers do not know is refused before sending; so are
	// missing arguments.
	o = stalk(t, ctx, "inspect", "memdump")
	assert.Equal(t, 2, o.code, o)
	o = stalk(t, ctx, "inspect", "query_task")
	assert.Equal(t, 2, o.code, o)
}

// TestCLIControlRateLimit: a rate limit set at run time slows a task down,
// and removing it speeds it up again.
func TestCLIControlRateLimit(t *testing.T) {
	ctlMu.Lock()
	defer ctlMu.Unlock()
	ctx := ctxFor(t, 90*time.Second)
	d := []string{"-d", ctlWorker.Hostname}
	group := func() time.Duration {
		t.Helper()
		steps := []string{"group"}
		for i := range 6 {
			steps = append(steps, "tasks.mul "+itoa(i)+" 2")
		}
		start := time.Now()
		o := stalk(t, ctx, append(append(steps, "-q", ctlWorker.Queue, "-t", "30"), replyArgs()...)...)
		require.Equal(t, 0, o.code, o)
		require.Equal(t, "[0,2,4,6,8,10]\n", o.stdout)
		return time.Since(start)
	}
	free := group()

	o := stalk(t, ctx, append([]string{"control", "rate_limit", "tasks.mul", "2/s"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "-> "+ctlWorker.Hostname+": OK\n    new rate limit set successfully\n", o.stdout)
	t.Cleanup(func() {
		stalk(t, context.Background(), append([]string{"control", "rate_limit", "tasks.mul", "0"}, d...)...)
	})
	o = stalk(t, ctx, append([]string{"inspect", "registered", "rate_limit"}, d...)...)
	assert.Contains(t, o.stdout, "* tasks.mul [rate_limit=2/s]")

	limited := group()
	t.Logf("6 tasks.mul: %s without a limit, %s at 2/s", free, limited)
	// Celery's token bucket holds one token: the first task starts at
	// once, the other five half a second apart.
	assert.GreaterOrEqual(t, limited, 2300*time.Millisecond)
	assert.Less(t, free, limited-time.Second)

	o = stalk(t, ctx, append([]string{"control", "rate_limit", "tasks.mul", "0"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "rate limit disabled successfully")
	again := group()
	assert.Less(t, again, limited-time.Second, "the limit is gone")

	// An unknown task is the worker's error: exit 1.
	o = stalk(t, ctx, append([]string{"control", "rate_limit", "tasks.nope", "1/s"}, d...)...)
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stdout, ": ERROR unknown task")
}

// TestCLIControlTimeLimit: time_limit changes the limits a worker holds
// for a task, as inspect registered shows them. (A Celery worker applies
// changed limits only to the tasks of its next consumer start, a
// reconnect: its per-task request class keeps the limits it was built
// with. A limit sent with the task, call --soft-time-limit, applies at
// once: TestCLICallOptions.)
func TestCLIControlTimeLimit(t *testing.T) {
	ctlMu.Lock()
	defer ctlMu.Unlock()
	ctx := ctxFor(t, 60*time.Second)
	d := []string{"-d", ctlWorker.Hostname}
	o := stalk(t, ctx, append([]string{"control", "time_limit", "tasks.slow", "1.5", "5"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "-> "+ctlWorker.Hostname+": OK\n    time limits set successfully\n", o.stdout)
	t.Cleanup(func() {
		stalk(t, context.Background(), append([]string{"control", "time_limit", "tasks.slow", "0"}, d...)...)
	})
	o = stalk(t, ctx, append([]string{"inspect", "registered", "time_limit", "soft_time_limit"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "* tasks.slow [time_limit=5 soft_time_limit=1.5]")

	o = stalk(t, ctx, append([]string{"control", "time_limit", "tasks.slow", "0"}, d...)...)
	require.Equal(t, 0, o.code, o)
	o = stalk(t, ctx, append([]string{"inspect", "registered", "time_limit", "soft_time_limit"}, d...)...)
	assert.Contains(t, o.stdout, "    * tasks.slow\n", "no limits any more")

	o = stalk(t, ctx, append([]string{"control", "time_limit", "tasks.nope", "1"}, d...)...)
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stdout, "ERROR unknown task")
}

// TestCLIControlConsumers: add_consumer makes a worker consume a new
// queue (a task sent there runs), cancel_consumer stops it (call then says
// that no worker consumes it, once).
func TestCLIControlConsumers(t *testing.T) {
	ctlMu.Lock()
	defer ctlMu.Unlock()
	ctx := ctxFor(t, 90*time.Second)
	d := []string{"-d", ctlWorker.Hostname}
	q := harness.Name("cli-added")
	t.Cleanup(func() { harness.DeleteQueue(t, q) })

	o := stalk(t, ctx, append([]string{"control", "add_consumer", q}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "add consumer "+q)
	require.Eventually(t, func() bool {
		o := stalk(t, ctx, append([]string{"inspect", "active_queues"}, d...)...)
		return strings.Contains(o.stdout, "* "+q+" ")
	}, 20*time.Second, 300*time.Millisecond)
	o = callOn(t, ctx, q, "tasks.add", "20", "22", "-t", "20")
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "42\n", o.stdout)
	assert.Contains(t, o.stderr, "on "+ctlWorker.Hostname)

	o = stalk(t, ctx, append([]string{"control", "cancel_consumer", q}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "no longer consuming from "+q)
	require.Eventually(t, func() bool {
		info, ok := harness.InspectQueue(t, q)
		return ok && info.Consumers == 0
	}, 20*time.Second, 300*time.Millisecond)

	o = callOn(t, ctx, q, "tasks.add", "1", "2", "-t", "5")
	assert.Equal(t, 3, o.code, o)
	assert.Equal(t, 1, strings.Count(o.stderr, "no worker consumes queue "+q), "said once: %s", o.stderr)
	harness.DeleteQueue(t, q)

	// A quorum queue, declared by the worker as quorum. Celery before 5.5
	// cannot consume one (it sets a global QoS, which quorum queues
	// refuse, and its consumer restarts for ever).
	if !harness.CeleryAtLeast(5, 5) {
		return
	}
	qq := harness.Name("cli-added-quorum")
	t.Cleanup(func() { harness.DeleteQueue(t, qq) })
	o = stalk(t, ctx, append([]string{"control", "add_consumer", qq, "--queue-type", "quorum"}, d...)...)
	require.Equal(t, 0, o.code, o)
	require.Eventually(t, func() bool {
		o := stalk(t, ctx, append([]string{"inspect", "active_queues"}, d...)...)
		return strings.Contains(o.stdout, "* "+qq+" exchange="+qq+"(direct) key="+qq+" quorum")
	}, 20*time.Second, 300*time.Millisecond)
	out, err := harness.Rabbitmqctl("list_queues", "-q", "name", "type")
	require.NoError(t, err, out)
	assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(qq)+`\s+quorum$`, out)
	o = stalk(t, ctx, append([]string{"control", "cancel_consumer", qq}, d...)...)
	require.Equal(t, 0, o.code, o)
}

// TestCLIControlPool: pool_grow and pool_shrink change the pool the
// worker's stats report.
func TestCLIControlPool(t *testing.T) {
	ctlMu.Lock()
	defer ctlMu.Unlock()
	ctx := ctxFor(t, 60*time.Second)
	d := []string{"-d", ctlWorker.Hostname}
	processes := func() int {
		o := stalk(t, ctx, append([]string{"-j", "inspect", "stats"}, d...)...)
		require.Equal(t, 0, o.code, o)
		var r struct {
			Reply struct {
				Pool struct {
					Processes []int `json:"processes"`
				} `json:"pool"`
			} `json:"reply"`
		}
		require.NoError(t, json.Unmarshal([]byte(o.stdout), &r), o.stdout)
		return len(r.Reply.Pool.Processes)
	}
	require.Equal(t, 1, processes())
	o := stalk(t, ctx, append([]string{"control", "pool_grow", "2"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "pool will grow")
	require.Eventually(t, func() bool { return processes() == 3 }, 20*time.Second, 300*time.Millisecond)
	o = stalk(t, ctx, append([]string{"control", "pool-shrink", "2"}, d...)...) // the dashed alias
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "pool will shrink")
	require.Eventually(t, func() bool { return processes() == 1 }, 20*time.Second, 300*time.Millisecond)
}

// TestCLIControlEvents: enable_events makes a worker started without -E
// send task events, disable_events stops them; heartbeat is sent.
func TestCLIControlEvents(t *testing.T) {
	ctlMu.Lock()
	defer ctlMu.Unlock()
	ctx := ctxFor(t, 90*time.Second)
	d := []string{"-d", ctlWorker.Hostname}
	// Sends a task to the ctl worker while listening, and returns the
	// events seen for it.
	eventsFor := func() []string {
		t.Helper()
		ev := startEvents(t, ctx, "events", "--duration", "4")
		ev.ready(t)
		o := callOn(t, ctx, ctlWorker.Queue, "tasks.add", "2", "2", "-t", "20")
		require.Equal(t, 0, o.code, o)
		id := sentID(t, o)
		var types []string
		for _, l := range strings.Split(ev.wait(t), "\n") {
			if f := strings.Fields(l); len(f) > 2 && strings.Contains(f[2], id) {
				types = append(types, f[1])
			}
		}
		return types
	}
	o := stalk(t, ctx, append([]string{"control", "enable_events"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "task events enabled")
	t.Cleanup(func() { stalk(t, context.Background(), append([]string{"control", "disable_events"}, d...)...) })
	assert.Equal(t, []string{"task-received", "task-started", "task-succeeded"}, eventsFor())

	o = stalk(t, ctx, append([]string{"control", "disable_events"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "task events disabled")
	assert.Empty(t, eventsFor())

	o = stalk(t, ctx, append([]string{"control", "heartbeat"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "heartbeat sent to "+ctlWorker.Hostname+" (workers do not reply to it)\n", o.stdout)
}

// TestCLIControlAutoscaleShutdown: autoscale changes an autoscaling
// worker's bounds; shutdown stops it.
func TestCLIControlAutoscaleShutdown(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	d := []string{"-d", scaleWorker.Hostname}
	o := stalk(t, ctx, append([]string{"control", "autoscale", "5", "2"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "autoscale now max=5 min=2")
	o = stalk(t, ctx, append([]string{"-j", "inspect", "stats"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, `"autoscaler":{"max":5,"min":2`)
	// An autoscaling worker refuses pool_grow: exit 1, its error shown.
	o = stalk(t, ctx, append([]string{"control", "pool_grow"}, d...)...)
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stdout, "ERROR pool_grow is not supported with autoscale")

	o = stalk(t, ctx, append([]string{"control", "shutdown"}, d...)...)
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "shutdown sent to "+scaleWorker.Hostname+" (workers do not reply to it)\n", o.stdout)
	select {
	case <-scaleWorker.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not shut down")
	}
	o = stalk(t, ctx, "ping", "-d", scaleWorker.Hostname, "-t", "0.5")
	assert.Equal(t, 1, o.code, o)
}

// TestCLIControlRevokeCommands: terminate and revoke_by_stamped_headers.
func TestCLIControlRevokeCommands(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	id := strings.TrimSpace(call(t, ctx, "tasks.slow", "30", "--no-wait", "--stamp", "batch=b7").stdout)
	require.Eventually(t, func() bool {
		o := stalk(t, ctx, "inspect", "active", "-d", worker.Hostname)
		return strings.Contains(o.stdout, "tasks.slow["+id+"]")
	}, 20*time.Second, 300*time.Millisecond)
	o := stalk(t, ctx, "control", "revoke_by_stamped_headers", "batch=b7", "-d", worker.Hostname)
	if harness.CeleryAtLeast(5, 3) {
		require.Equal(t, 0, o.code, o)
	} else {
		assert.Equal(t, 1, o.code, "Celery before 5.3 does not know it: %s", o)
		assert.Contains(t, o.stdout, "ERROR KeyError('revoke_by_stamped_headers')")
	}
	o = stalk(t, ctx, "control", "terminate", "SIGKILL", id, "-d", worker.Hostname)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "terminate: "+id)
	o = stalk(t, ctx, append([]string{"result", id, "--wait", "-t", "20"}, replyArgs()...)...)
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stdout, "REVOKED")
}

// TestCLIPurge: purge asks first, and deletes the waiting tasks of the
// queue it is given, and nothing else.
func TestCLIPurge(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	q := harness.Name("cli-purge")
	t.Cleanup(func() { harness.DeleteQueue(t, q) })
	for i := range 3 {
		o := callOn(t, ctx, q, "tasks.add", itoa(i), "1", "--ignore-result")
		require.Equal(t, 0, o.code, o)
	}
	info, ok := harness.InspectQueue(t, q)
	require.True(t, ok)
	require.Equal(t, 3, info.Messages)

	o := stalkIn(t, ctx, "n\n", "purge", "-Q", q)
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stderr, q+" (3 tasks waiting)")
	assert.Contains(t, o.stderr, "not confirmed: nothing purged")
	info, _ = harness.InspectQueue(t, q)
	assert.Equal(t, 3, info.Messages, "nothing purged")

	o = stalkIn(t, ctx, "", "purge", "-Q", q) // no answer at all
	assert.Equal(t, 1, o.code, o)

	o = stalkIn(t, ctx, "y\n", "purge", "-Q", q+","+harness.Name("cli-purge-missing"))
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "Purged 3 tasks from 1 queue: "+q+".\n", o.stdout)
	assert.Contains(t, o.stderr, "does not exist; skipped")
	info, _ = harness.InspectQueue(t, q)
	assert.Equal(t, 0, info.Messages)

	o = stalk(t, ctx, "-j", "purge", "-Q", q, "-f")
	require.Equal(t, 0, o.code, o)
	l := jsonLines(t, o.stdout)
	assert.Equal(t, "purged", l[0]["event"])
	assert.Equal(t, json.Number("0"), l[0]["purged"])
}

// TestCLICanvas: chain, group and apply from the command line, and graph
// of a chain sent that way: no Go program needed.
func TestCLICanvas(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 90*time.Second)
	run := func(args ...string) out {
		return stalk(t, ctx, append(append(args, "-q", queue, "-t", "30"), replyArgs()...)...)
	}
	o := run("chain", "tasks.add 1 2", "tasks.add 10", "tasks.mul 3")
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "39\n", o.stdout)
	assert.Contains(t, o.stderr, "sent chain tasks.add[")
	assert.Regexp(t, `\] tasks\.mul\[[0-9a-f-]{36}\] SUCCESS 39\n`, o.stderr)

	o = run("chain", "tasks.add 1 2", `tasks.echo --si "two words" -k '{"k": -1}'`)
	require.Equal(t, 0, o.code, o)
	assert.JSONEq(t, `{"args": ["two words"], "kwargs": {"k": -1}}`, o.stdout, "immutable: no parent value")

	o = run("group", "tasks.add 1 2", "tasks.add 3 4", "tasks.mul 5 6")
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "[3,7,30]\n", o.stdout)

	o = run("group", "tasks.add 1 2", "tasks.boom oops")
	assert.Equal(t, 1, o.code, o)
	assert.Equal(t, "[3,null]\n", o.stdout)
	assert.Contains(t, o.stderr, "ValueError: oops")

	o = run("--json", "chain", "tasks.add 1 2", "tasks.boom --si x", "tasks.add 1")
	assert.Equal(t, 1, o.code, o)
	lines := jsonLines(t, o.stdout)
	require.Len(t, lines, 3, "sent, two results: the third step never ran")
	assert.Len(t, lines[0]["steps"], 3)
	assert.Equal(t, "FAILURE", lines[2]["state"])
	assert.Contains(t, o.stderr, "the chain stopped: 1 step after it will not run")

	canvas := `{"chain": [{"task": "tasks.add", "args": [1, 2]}, {"group": [{"task": "tasks.add", "args": [10]}, {"task": "tasks.mul", "args": [10]}]}]}`
	o = run("apply", canvas)
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "[13,30]\n", o.stdout)
	file := filepath.Join(t.TempDir(), "c.json")
	require.NoError(t, os.WriteFile(file, []byte(canvas), 0o644))
	o = run("apply", "@"+file)
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "[13,30]\n", o.stdout)

	// Celery's own JSON for chain(add.s(2, 2), mul.s(5)), from Python.
	py, err := harness.PythonScript(ctx, `import json; from celery import chain; import tasks; print(json.dumps(chain(tasks.add.s(2, 2), tasks.mul.s(5))))`)
	require.NoError(t, err)
	o = stalkIn(t, ctx, string(py), append([]string{"apply", "-", "-q", queue, "-t", "30"}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "20\n", o.stdout)

	// --no-wait prints the first and last ids; graph draws the chain.
	o = run("chain", "tasks.add 1 2", "tasks.add 10", "tasks.mul 3", "--no-wait")
	require.Equal(t, 0, o.code, o)
	ids := strings.Fields(o.stdout)
	require.Len(t, ids, 2)
	o = stalk(t, ctx, append([]string{"--json", "graph", ids[0], "--wait", "-t", "20"}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)
	var g struct {
		Nodes []struct{ ID, State string }
		Edges []struct{ From, To string }
	}
	require.NoError(t, json.Unmarshal([]byte(o.stdout), &g), o.stdout)
	require.Len(t, g.Nodes, 3)
	assert.Len(t, g.Edges, 2)
	assert.Equal(t, ids[0], g.Edges[0].From)
	assert.Equal(t, ids[1], g.Edges[1].To)
}

// TestCLIResultNeverStepsBack: readers of a running task see its states
// go forward, are told when no final state is stored yet, and never see
// PENDING after something else.
func TestCLIResultNeverStepsBack(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	id := strings.TrimSpace(call(t, ctx, "tasks.progress", "8", "0.5", "--no-wait").stdout)
	var seen []string
	for range 20 {
		o := stalk(t, ctx, append([]string{"result", id}, replyArgs()...)...)
		require.Equal(t, 0, o.code, o)
		st := regexp.MustCompile(`(?m)^state\s+(\S+)$`).FindStringSubmatch(o.stdout)
		require.NotNil(t, st, o.stdout)
		seen = append(seen, st[1])
		if st[1] == "SUCCESS" {
			assert.Contains(t, o.stdout, "result  8\n")
			break
		}
		assert.NotEqual(t, "PENDING", st[1], "the reply queue exists: never PENDING")
		assert.Contains(t, o.stdout, "no final state stored yet")
	}
	t.Logf("states seen by successive readers: %v", seen)
	require.Equal(t, "SUCCESS", seen[len(seen)-1])
	// After the reader printed the final state, it is gone, and the next
	// reader says why.
	o := stalk(t, ctx, append([]string{"-j", "result", id}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)
	l := jsonLines(t, o.stdout)
	assert.Equal(t, "PENDING", l[0]["state"])
	assert.Contains(t, l[0]["note"], "deleted after it was read")
}

// TestCLIReplyQueues: what call leaves on the broker.
func TestCLIReplyQueues(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	o := call(t, ctx, "tasks.add", "1", "2")
	require.Equal(t, 0, o.code, o)
	_, exists := harness.InspectQueue(t, replyPrefix+sentID(t, o))
	assert.False(t, exists, "printed, then deleted")

	o = call(t, ctx, "tasks.add", "1", "2", "--keep")
	require.Equal(t, 0, o.code, o)
	q, exists := harness.InspectQueue(t, replyPrefix+sentID(t, o))
	assert.True(t, exists, "--keep leaves it for 'stalk result'")
	assert.Equal(t, 1, q.Messages, "with the final state in it")

	o = call(t, ctx, "tasks.add", "1", "2", "--mode", "shared")
	require.Equal(t, 0, o.code, o)
}

// TestCLICallOptions: send options and topology flags reach the worker
// and the broker.
func TestCLICallOptions(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	taskID := "11111111-2222-4333-8444-" + harness.RunID + "0000"
	o := call(t, ctx, "tasks.request_info", "id", "timelimit", "stamps", "foo", "shadow",
		"--task-id", taskID, "--time-limit", "30", "--soft-time-limit", "20",
		"--header", "foo=bar", "--stamp", "batch=b1", "--priority", "3", "--expires", "60", "--shadow", "nick")
	require.Equal(t, 0, o.code, o)
	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(o.stdout), &info), o.stdout)
	assert.Equal(t, taskID, info["id"])
	assert.Equal(t, []any{float64(30), float64(20)}, info["timelimit"])
	assert.Equal(t, "bar", info["foo"])
	assert.Equal(t, map[string]any{"exchange": "", "routing_key": queue}, info["delivery_info"])

	// A soft time limit sent with the task interrupts it.
	start := time.Now()
	o = call(t, ctx, "tasks.slow", "5", "--soft-time-limit", "1", "-t", "20")
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stderr, "SoftTimeLimitExceeded")
	assert.Less(t, time.Since(start), 4*time.Second, "stopped at the 1 s limit, not after 5 s")

	// -a takes Celery's JSON array; --exchange and --routing-key route
	// the task themselves.
	o = call(t, ctx, "tasks.add", "-a", "[40, 2]")
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "42\n", o.stdout)
	o = stalk(t, ctx, append([]string{"call", "tasks.add", "1", "1", "--exchange", "", "--routing-key", queue, "-t", "20"}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)

	// --ignore-result: the id, and no reply queue.
	o = call(t, ctx, "tasks.add", "1", "1", "--ignore-result")
	require.Equal(t, 0, o.code, o)
	id := strings.TrimSpace(o.stdout)
	rq, exists := harness.InspectQueue(t, replyPrefix+id)
	assert.False(t, exists, "reply queue %+v", rq)

	// Topology: a queue stalk declares as quorum, by flag and by
	// environment; one it must not declare.
	for _, viaEnv := range []bool{false, true} {
		q := harness.Name("cli-quorum", map[bool]string{false: "flag", true: "env"}[viaEnv])
		t.Cleanup(func() { harness.DeleteQueue(t, q) })
		args := append([]string{"call", "tasks.add", "1", "1", "-q", q, "--ignore-result"}, replyArgs()...)
		if !viaEnv {
			args = append(args, "--queue-type", "quorum")
		}
		cmd := command(ctx, args...)
		if viaEnv {
			cmd.Env = append(cmd.Env, "STALK_DEFAULT_QUEUE_TYPE=quorum")
		}
		outb, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", outb)
		list, err := harness.Rabbitmqctl("list_queues", "-q", "name", "type")
		require.NoError(t, err, list)
		assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(q)+`\s+quorum$`, list)
	}
	missing := harness.Name("cli-not-declared")
	o = stalk(t, ctx, append([]string{"call", "tasks.add", "1", "1", "-q", missing, "--no-declare"}, replyArgs()...)...)
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stderr, "queue not found")
	_, exists = harness.InspectQueue(t, missing)
	assert.False(t, exists, "--no-declare declared nothing")
	// Native delayed delivery is for quorum queues: required on a classic
	// queue is an error before anything is sent.
	o = call(t, ctx, "tasks.add", "1", "1", "--countdown", "5", "--delayed-delivery", "required")
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stderr, "delayed delivery")
}

// TestCLICompletion: the scripts are generated, and the shells that are
// installed parse them.
func TestCLICompletion(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	for _, sh := range []struct{ shell, check string }{{"bash", "-n"}, {"zsh", "-n"}, {"fish", "--no-execute"}} {
		o := stalk(t, ctx, "completion", sh.shell)
		require.Equal(t, 0, o.code, o)
		require.NotEmpty(t, o.stdout)
		path, err := exec.LookPath(sh.shell)
		if err != nil {
			if sh.shell == "bash" {
				t.Fatal("bash is needed to check the bash completion")
			}
			t.Logf("%s not installed: its script is generated but not parsed", sh.shell)
			continue
		}
		file := filepath.Join(t.TempDir(), "stalk."+sh.shell)
		require.NoError(t, os.WriteFile(file, []byte(o.stdout), 0o644))
		outb, err := exec.CommandContext(ctx, path, sh.check, file).CombinedOutput()
		assert.NoError(t, err, "%s %s: %s", sh.shell, sh.check, outb)
	}
	// What the scripts ask the binary: inspect methods and flag values.
	o := stalk(t, ctx, "__complete", "inspect", "")
	require.Equal(t, 0, o.code, o)
	for _, m := range []string{"active", "scheduled", "reserved", "revoked", "registered", "stats", "active_queues", "query_task", "conf", "report", "ping"} {
		assert.Contains(t, o.stdout, m+"\t")
	}
	o = stalk(t, ctx, "__complete", "call", "tasks.add", "--queue-type", "")
	assert.Contains(t, o.stdout, "quorum\n")
	o = stalk(t, ctx, "completion", "tcsh")
	assert.Equal(t, 2, o.code, o)
}
