package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

func TestCLICallSuccess(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	o := call(t, ctx, "tasks.add", "2", "3")
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, "5\n", o.stdout)
	assert.Contains(t, o.stderr, "sent tasks.add[")
	assert.Contains(t, o.stderr, "to queue "+queue)
	assert.Contains(t, o.stderr, "STARTED on "+worker.Hostname)
	assert.Contains(t, o.stderr, "SUCCESS")
	assert.NotContains(t, o.stderr, "\r", "plain lines when stderr is not a terminal")

	// JSON arguments of every kind reach the worker intact, bare words as
	// strings, large integers exactly.
	o = call(t, ctx, "tasks.echo", "hello", `"quoted"`, "-7", "123456789012345678901234567890", `{"a": [1, 2.5, null]}`, "--kwargs", `{"k": true}`)
	require.Equal(t, 0, o.code, o)
	assert.JSONEq(t, `{"args": ["hello", "quoted", -7, 123456789012345678901234567890, {"a": [1, 2.5, null]}], "kwargs": {"k": true}}`, o.stdout)
	assert.Contains(t, o.stdout, "123456789012345678901234567890", "not rounded through float64")

	// Shared reply mode, and global flags after the command.
	o = call(t, ctx, "tasks.mul", "6", "7", "--mode", "shared", "--json")
	require.Equal(t, 0, o.code, o)
	lines := jsonLines(t, o.stdout)
	last := lines[len(lines)-1]
	assert.Equal(t, "result", last["event"])
	assert.Equal(t, "SUCCESS", last["state"])
	assert.Equal(t, json.Number("42"), last["result"])
}

func TestCLICallFailure(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	o := call(t, ctx, "tasks.boom", "kaboom")
	require.Equal(t, 1, o.code, o)
	assert.Empty(t, o.stdout)
	assert.Contains(t, o.stderr, "Traceback (most recent call last):")
	assert.Contains(t, o.stderr, `raise ValueError(msg)`)
	assert.Contains(t, o.stderr, "ValueError: kaboom\n")
	assert.Contains(t, o.stderr, "stalk call: task tasks.boom[")
	assert.Contains(t, o.stderr, "] failed: ValueError: kaboom\n")

	// An application exception is named with its module; --json puts it
	// in the result line.
	o = call(t, ctx, "tasks.custom_fail", "E42", "disk full", "--json")
	require.Equal(t, 1, o.code, o)
	lines := jsonLines(t, o.stdout)
	last := lines[len(lines)-1]
	assert.Equal(t, "FAILURE", last["state"])
	exc := last["exception"].(map[string]any)
	assert.Equal(t, "CustomError", exc["type"])
	assert.Equal(t, "tasks", exc["module"])
	assert.Equal(t, []any{"E42", "disk full"}, exc["args"])
	assert.Contains(t, last["traceback"], "CustomError")
	assert.Contains(t, o.stderr, "failed: tasks.CustomError: (\"E42\", \"disk full\")")
}

func TestCLICallTimeout(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	start := time.Now()
	o := call(t, ctx, "tasks.slow", "2", "--timeout", "500ms")
	require.Equal(t, 3, o.code, o)
	assert.Less(t, time.Since(start), 10*time.Second)
	assert.Empty(t, o.stdout)
	id := sentID(t, o)
	assert.Contains(t, o.stderr, "timed out after 500ms waiting for tasks.slow["+id+"]")
	assert.Contains(t, o.stderr, "stalk result "+id+" --wait")

	// The task went on; its result is still there for a later reader.
	o = stalk(t, ctx, append([]string{"result", id, "--wait", "--timeout", "20s"}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "result  2\n")

	// With --json the timeout is the closing line, on stdout; bare
	// seconds work for -t.
	o = call(t, ctx, "tasks.slow", "2", "-t", "0.5", "--json")
	require.Equal(t, 3, o.code, o)
	lines := jsonLines(t, o.stdout)
	last := lines[len(lines)-1]
	assert.Equal(t, "error", last["event"])
	assert.Equal(t, "timeout", last["error"])
	assert.Equal(t, json.Number("3"), last["exit_code"])
	assert.Equal(t, lines[0]["id"], last["id"])
	assert.Contains(t, last["message"], "timed out after 500ms")
}

func TestCLICallUsageErrors(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"cal", "tasks.add"}, `did you mean "call"?`},
		{[]string{"call"}, "missing TASK"},
		{[]string{"call", "tasks.add", `{"x": 1`}, "argument 1"},
		{[]string{"call", "tasks.add", "--kwargs", "x=1"}, "--kwargs"},
		{[]string{"call", "tasks.add", "--mode", "turbo"}, "--mode"},
		{[]string{"call", "tasks.add", "--countdown", "soon"}, "--countdown"},
		{[]string{"call", "tasks.add", "--no-such-flag"}, "no-such-flag"},
		{[]string{"inspect", "everything"}, "inspect active"},
	}
	for _, c := range cases {
		o := stalk(t, ctx, c.args...)
		assert.Equal(t, 2, o.code, o)
		assert.Empty(t, o.stdout, c.args)
		assert.Contains(t, o.stderr, c.want, c.args)
		assert.Equal(t, 1, strings.Count(o.stderr, "\n"), "one line: %q", o.stderr)
	}

	// An unreachable broker: one line, exit 4, no password.
	cmd := exec.CommandContext(ctx, bin, "--broker", "amqp://guest:s3cret-pw@127.0.0.1:1//", "--connect-timeout", "500ms", "call", "tasks.add", "1", "2")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 4, ee.ExitCode(), stderr.String())
	assert.Contains(t, stderr.String(), "cannot connect to the broker at amqp://guest:xxxxx@127.0.0.1:1/")
	assert.NotContains(t, stderr.String(), "s3cret")
	assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), stderr.String())

	// --help works on every command and exits 0.
	for _, c := range []string{"call", "result", "revoke", "ping", "inspect", "events", "graph"} {
		o := stalk(t, ctx, c, "--help")
		assert.Equal(t, 0, o.code, o)
		assert.Contains(t, o.stdout, "Examples:")
	}
}

func TestCLICallProgressJSON(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	o := call(t, ctx, "tasks.progress", "5", "0.05", "--json")
	require.Equal(t, 0, o.code, o)
	assert.Empty(t, o.stderr, "--json keeps stderr for errors")
	lines := jsonLines(t, o.stdout)
	require.GreaterOrEqual(t, len(lines), 7, o.stdout) // sent, STARTED, 5 PROGRESS, result
	assert.Equal(t, "sent", lines[0]["event"])
	assert.Equal(t, "tasks.progress", lines[0]["task"])
	id := lines[0]["id"]
	var progress []any
	for _, l := range lines[1 : len(lines)-1] {
		assert.Equal(t, "state", l["event"])
		assert.Equal(t, id, l["id"])
		if l["state"] == "PROGRESS" {
			meta := l["meta"].(map[string]any)
			assert.Equal(t, json.Number("5"), meta["total"])
			progress = append(progress, meta["current"])
		}
	}
	assert.Equal(t, []any{json.Number("0"), json.Number("1"), json.Number("2"), json.Number("3"), json.Number("4")}, progress)
	last := lines[len(lines)-1]
	assert.Equal(t, "result", last["event"])
	assert.Equal(t, "SUCCESS", last["state"])
	assert.Equal(t, json.Number("5"), last["result"])
}

func TestCLICallProgressTerminal(t *testing.T) {
	t.Parallel()
	script, err := exec.LookPath("script")
	if err != nil {
		if os.Getenv("STALK_REQUIRE_BROKER") == "1" {
			t.Fatal("script(1) (util-linux) is needed for the pseudo-terminal test")
		}
		t.Skip("script(1) not installed: no pseudo-terminal")
	}
	ctx := ctxFor(t, 30*time.Second)
	line := shellQuote(append([]string{bin, "--broker", harness.BrokerURL(), "call", "tasks.progress", "4", "0.1", "--queue", queue}, replyArgs()...))
	cmd := exec.CommandContext(ctx, script, "-qec", "stty cols 100 2>/dev/null; "+line, "/dev/null")
	cmd.Env = append(cmd.Environ(), "STALK_BROKER_URL=", "TERM=xterm")
	raw, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", raw)
	s := string(raw)
	t.Logf("terminal output: %q", s)
	assert.Contains(t, s, "\r", "the line is redrawn in place")
	assert.Contains(t, s, "\x1b[K")
	assert.Contains(t, s, "tasks.progress PROGRESS [")
	assert.Contains(t, s, "█")
	assert.Contains(t, s, "2/4")
	assert.Contains(t, s, "✔ tasks.progress SUCCESS [████")
	assert.Contains(t, s, "4/4  100%")
	assert.Contains(t, s, "\n4\r\n", "the result on stdout, after the bar's line")
}

func TestCLIResultFromSecondInvocation(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	o := call(t, ctx, "tasks.add", "20", "22", "--no-wait")
	require.Equal(t, 0, o.code, o)
	id := strings.TrimSpace(o.stdout)
	require.Regexp(t, `^[0-9a-f-]{36}$`, id)

	res := func(args ...string) out {
		return stalk(t, ctx, append(append([]string{"result", id}, args...), replyArgs()...)...)
	}
	o = res("--wait", "--timeout", "20", "--keep")
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "state   SUCCESS\n")
	assert.Contains(t, o.stdout, "result  42\n")
	assert.Equal(t, 1, strings.Count(o.stdout+o.stderr, id), "the id once: %s", o)

	// Another process, later, without waiting: the final state was kept.
	o = res("--json")
	require.Equal(t, 0, o.code, o)
	lines := jsonLines(t, o.stdout)
	require.Len(t, lines, 1)
	assert.Equal(t, id, lines[0]["id"])
	assert.Equal(t, "SUCCESS", lines[0]["state"])
	assert.Equal(t, true, lines[0]["ready"])
	assert.Equal(t, json.Number("42"), lines[0]["result"])

	// That reader did not --keep it: the reply queue is gone, and a third
	// reader is told so.
	_, exists := harness.InspectQueue(t, replyPrefix+id)
	assert.False(t, exists, "the reply queue is deleted once the result is printed")
	o = res()
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "state  PENDING\n")
	assert.Contains(t, o.stdout, "deleted after it was read")
	o = res("--wait", "-t", "5")
	assert.Equal(t, 1, o.code, "nothing to wait for: %s", o)
	assert.Contains(t, o.stderr, "nothing to wait for")

	// A failure read back: exit 1, the traceback on stderr.
	o = call(t, ctx, "tasks.boom", "later", "--no-wait")
	require.Equal(t, 0, o.code, o)
	failed := strings.TrimSpace(o.stdout)
	o = stalk(t, ctx, append([]string{"result", failed, "--wait", "--timeout", "20s"}, replyArgs()...)...)
	require.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stdout, "FAILURE")
	assert.Contains(t, o.stderr, "ValueError: later")

	// An id nobody sent: PENDING, and no queue left behind for it.
	o = stalk(t, ctx, append([]string{"result", "00000000-0000-4000-8000-000000000000"}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, "PENDING")
}

func TestCLIRevokeRunningTask(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	o := call(t, ctx, "tasks.slow", "30", "--no-wait")
	require.Equal(t, 0, o.code, o)
	id := strings.TrimSpace(o.stdout)

	// Wait until the worker runs it.
	require.Eventually(t, func() bool {
		o := stalk(t, ctx, "inspect", "active", "--destination", worker.Hostname)
		return o.code == 0 && strings.Contains(o.stdout, "tasks.slow["+id+"]")
	}, 20*time.Second, 300*time.Millisecond)

	o = stalk(t, ctx, "revoke", id, "--terminate", "--wait", "2s", "--destination", worker.Hostname)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, worker.Hostname+": ")
	assert.Contains(t, o.stdout, id)

	o = stalk(t, ctx, append([]string{"result", id, "--wait", "--timeout", "20s"}, replyArgs()...)...)
	require.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stdout, "REVOKED")
	assert.Contains(t, o.stderr, "was revoked")

	o = stalk(t, ctx, "--json", "inspect", "revoked", "--destination", worker.Hostname)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, id)

	// A signal without --terminate is a usage error, caught before sending.
	o = stalk(t, ctx, "revoke", id, "--signal", "KILL")
	assert.Equal(t, 2, o.code, o)
}

func TestCLIPing(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	o := stalk(t, ctx, "ping", "--destination", worker.Hostname, "--timeout", "3s")
	require.Equal(t, 0, o.code, o)
	assert.Equal(t, worker.Hostname+": pong\n", o.stdout)

	o = stalk(t, ctx, "--json", "ping", "--timeout", "2s")
	require.Equal(t, 0, o.code, o)
	found := false
	for _, l := range jsonLines(t, o.stdout) {
		if l["worker"] == worker.Hostname {
			found = true
			assert.Equal(t, "pong", l["ok"])
		}
	}
	assert.True(t, found, "our worker answers a broadcast ping")

	o = stalk(t, ctx, "ping", "--destination", "nobody@nowhere", "--timeout", "500ms")
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stderr, "no worker replied")
}

func TestCLIEvents(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	// Long enough for a task to get through a worker that other parallel
	// tests keep busy.
	stream := startEvents(t, ctx, "events", "--duration", "8s")
	table := startEvents(t, ctx, "events", "--tasks", "--duration", "8s")
	stream.ready(t)
	table.ready(t)

	o := call(t, ctx, "tasks.add", "7", "8")
	require.Equal(t, 0, o.code, o)
	id := sentID(t, o)

	lines := stream.wait(t)
	var mine []string
	for _, l := range strings.Split(lines, "\n") {
		if strings.Contains(l, id) {
			mine = append(mine, l)
		}
	}
	require.Len(t, mine, 3, "received, started, succeeded:\n%s", lines)
	for i, want := range []struct{ typ, state string }{{"task-received", "RECEIVED"}, {"task-started", "STARTED"}, {"task-succeeded", "SUCCESS"}} {
		f := strings.Fields(mine[i])
		require.GreaterOrEqual(t, len(f), 5, mine[i])
		assert.Regexp(t, `^\d\d:\d\d:\d\d\.\d{3}$`, f[0])
		assert.Equal(t, want.typ, f[1])
		assert.Equal(t, "tasks.add["+id+"]", f[2])
		assert.Equal(t, worker.Hostname, f[3])
		assert.Equal(t, want.state, f[4])
	}
	assert.Contains(t, mine[2], "result=15")

	tab := table.wait(t)
	assert.Regexp(t, `(?m)^\S+\s+SUCCESS\s+tasks\.add\s+`+id+`\s+`+regexp.QuoteMeta(worker.Hostname), tab)
	// The worker pane: our worker alive, having processed at least this
	// task, with a heartbeat seconds ago.
	assert.Regexp(t, `(?m)^WORKER\s+STATUS\s+ACTIVE\s+PROCESSED\s+HEARTBEAT$`, tab)
	assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(worker.Hostname)+`\s+alive\s+\d+\s+[1-9]\d*\s+\d+(\.\d)?m?s ago$`, tab)
}

func TestCLIGraphChain(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 60*time.Second)
	c, err := amqp.Dial(ctx, harness.BrokerURL(),
		amqp.WithReplyQueuePrefix(replyPrefix), amqp.WithResultExpires(10*time.Minute),
		amqp.WithConnectionName(harness.Name("cli-graph")))
	require.NoError(t, err)
	defer c.Close()
	add := func(args ...any) *amqp.TaskSig { return amqp.Sig("tasks.add", amqp.Args(args...)) }
	r, err := c.Apply(ctx, amqp.NewChain(add(1, 2), add(10), amqp.Sig("tasks.mul", amqp.Args(3))).Set(amqp.Queue(queue)))
	require.NoError(t, err)
	last, ok := r.(*result.AsyncResult)
	require.True(t, ok, "%T", r)
	v, err := last.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(39), v)
	second := last.Parent()
	require.NotNil(t, second)
	first := second.Parent()
	require.NotNil(t, first)

	o := stalk(t, ctx, append([]string{"graph", first.ID(), "--wait", "--timeout", "20", "--keep"}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)
	dot := o.stdout
	assert.True(t, strings.HasPrefix(dot, "digraph dependencies {\n"), dot)
	for _, id := range []string{first.ID(), second.ID(), last.ID()} {
		assert.Contains(t, dot, id+`\nSUCCESS"`)
	}
	assert.Contains(t, dot, `"`+first.ID()+`\nSUCCESS" -> "`+second.ID()+`\nSUCCESS"`)
	assert.Contains(t, dot, `"`+second.ID()+`\nSUCCESS" -> "`+last.ID()+`\nSUCCESS"`)
	assert.Equal(t, 2, strings.Count(dot, " -> "), dot)

	// Without --wait it reads the stored states; --plain labels by id.
	o = stalk(t, ctx, append([]string{"graph", first.ID(), "--plain", "--keep"}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)
	assert.Contains(t, o.stdout, `"`+first.ID()+`" -> "`+second.ID()+`"`)
	assert.Contains(t, o.stdout, `"`+second.ID()+`" -> "`+last.ID()+`"`)

	// --json: nodes and edges, not DOT. This reader does not --keep.
	o = stalk(t, ctx, append([]string{"--json", "graph", first.ID()}, replyArgs()...)...)
	require.Equal(t, 0, o.code, o)
	var g struct {
		Root  string
		Nodes []struct{ ID, Kind, State string }
		Edges []struct{ From, To string }
	}
	require.NoError(t, json.Unmarshal([]byte(o.stdout), &g), o.stdout)
	assert.Equal(t, first.ID(), g.Root)
	require.Len(t, g.Nodes, 3)
	for _, n := range g.Nodes {
		assert.Equal(t, "task", n.Kind)
		assert.Equal(t, "SUCCESS", n.State)
	}
	assert.Equal(t, []struct{ From, To string }{{first.ID(), second.ID()}, {second.ID(), last.ID()}}, g.Edges)
	o = stalk(t, ctx, append([]string{"graph", first.ID()}, replyArgs()...)...)
	assert.Equal(t, 1, o.code, "the --json reader deleted them: %s", o)

	if dotBin, err := exec.LookPath("dot"); err == nil {
		cmd := exec.CommandContext(ctx, dotBin, "-Tsvg")
		cmd.Stdin = strings.NewReader(dot)
		svg, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", svg)
		assert.Contains(t, string(svg), "<svg")
	}

	o = stalk(t, ctx, append([]string{"graph", "00000000-0000-4000-8000-000000000000"}, replyArgs()...)...)
	assert.Equal(t, 1, o.code, o)
	assert.Contains(t, o.stderr, "no result stored")
}

// ---- helpers ---------------------------------------------------------------

// jsonLines decodes one JSON object per line, numbers as json.Number.
func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.UseNumber()
		var m map[string]any
		require.NoError(t, dec.Decode(&m), "line %q", sc.Text())
		out = append(out, m)
	}
	require.NotEmpty(t, out, "no JSON lines")
	return out
}

// bg is a stalk process running in the background.
type bg struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr *harness.SyncBuffer
	done   chan error
}

func startEvents(t *testing.T, ctx context.Context, args ...string) *bg {
	t.Helper()
	b := &bg{stderr: &harness.SyncBuffer{}, done: make(chan error, 1)}
	b.cmd = command(ctx, args...)
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, b.stderr
	require.NoError(t, b.cmd.Start())
	go func() { b.done <- b.cmd.Wait() }()
	return b
}

// ready waits until the event queue is consumed: events says so on stderr.
func (b *bg) ready(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool { return strings.Contains(b.stderr.String(), "listening for events") },
		10*time.Second, 20*time.Millisecond, "stderr: %s", b.stderr.String())
}

func (b *bg) wait(t *testing.T) string {
	t.Helper()
	select {
	case err := <-b.done:
		require.NoError(t, err, "stderr: %s", b.stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("stalk events did not stop after --duration")
	}
	t.Logf("%s\nstdout:\n%s\nstderr:\n%s", b.cmd.Args, b.stdout.String(), b.stderr.String())
	return b.stdout.String()
}

func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
