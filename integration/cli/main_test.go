// Package cli tests the stalk command line: it builds the binary once and
// runs it against the real broker and a real Celery 5.2.6 worker.
package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stalk-dev/stalk/integration/harness"
)

var (
	bin    string // the stalk binary
	queue  string // the run's task queue; worker consumes it
	worker *harness.Worker
	// ctlWorker is for control commands that change a worker (rate and
	// time limits, consumers, pool size, events): one process, its own
	// queue, no task events until a test enables them. Tests that use it
	// run one after another (ctlMu).
	ctlWorker *harness.Worker
	// scaleWorker runs with --autoscale, and is shut down by a test.
	scaleWorker *harness.Worker
	// vcsStamped: the binary carries its VCS revision (built with
	// -buildvcs=true; false when git could not stamp it).
	vcsStamped bool
	// Reply queues of this run: a prefix of their own, and a short
	// lifetime so that nothing lingers on the shared broker.
	replyPrefix  string
	replyExpires = "1m"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "stalk-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	code := harness.Main(m, harness.Shared, func() error {
		bin = filepath.Join(dir, "stalk")
		// With the VCS stamp when git can give it, for --version.
		cmd := exec.Command("go", "build", "-buildvcs=true", "-o", bin, "./cmd/stalk")
		cmd.Dir = moduleRoot()
		if _, err := cmd.CombinedOutput(); err == nil {
			vcsStamped = true
		} else {
			cmd = exec.Command("go", "build", "-o", bin, "./cmd/stalk")
			cmd.Dir = moduleRoot()
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go build ./cmd/stalk: %v\n%s", err, out)
			}
		}
		queue = harness.Name("cli")
		replyPrefix = harness.Name("cli-reply") + "."
		// The three workers start together.
		type started struct {
			w   **harness.Worker
			err error
		}
		cfgs := []struct {
			w   **harness.Worker
			cfg harness.WorkerConfig
		}{
			{&worker, harness.WorkerConfig{Queue: queue, Concurrency: 4, Events: true}},
			{&ctlWorker, harness.WorkerConfig{Queue: harness.Name("cli-ctl"), Concurrency: 1}},
			{&scaleWorker, harness.WorkerConfig{Queue: harness.Name("cli-scale"), Args: []string{"--autoscale=3,1"}}},
		}
		done := make(chan started, len(cfgs))
		for _, c := range cfgs {
			go func() {
				w, err := harness.StartWorker(c.cfg)
				*c.w = w
				done <- started{c.w, err}
			}()
		}
		var errs []error
		for range cfgs {
			if s := <-done; s.err != nil {
				errs = append(errs, s.err)
			}
		}
		return errors.Join(errs...)
	})
	os.RemoveAll(dir)
	os.Exit(code)
}

// moduleRoot is the folder holding go.mod, found from this file's path.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// out is one finished run of the binary.
type out struct {
	code           int
	stdout, stderr string
}

func (o out) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", o.code, o.stdout, o.stderr)
}

// stalk runs the binary with the run's broker and args, and waits for it.
func stalk(t *testing.T, ctx context.Context, args ...string) out {
	t.Helper()
	cmd := command(ctx, args...)
	var stdout, stderr bytes.Buffer
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

func command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, append([]string{"--broker", harness.BrokerURL()}, args...)...)
	cmd.Env = append(os.Environ(), "STALK_BROKER_URL=", "CELERY_BROKER_URL=")
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// replyArgs are the reply-queue flags every call, result and graph of the
// run uses.
func replyArgs() []string {
	return []string{"--reply-prefix", replyPrefix, "--result-expires", replyExpires}
}

// call runs "stalk call TASK ARGS... --queue <run queue>" plus extra flags.
func call(t *testing.T, ctx context.Context, task string, args ...string) out {
	t.Helper()
	full := append([]string{"call", task}, args...)
	full = append(full, "--queue", queue)
	return stalk(t, ctx, append(full, replyArgs()...)...)
}

var idRE = regexp.MustCompile(`\[([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]`)

// sentID reads the task id from call's "sent NAME[ID] to queue Q" line.
func sentID(t *testing.T, o out) string {
	t.Helper()
	m := idRE.FindStringSubmatch(o.stderr)
	if m == nil {
		t.Fatalf("no task id in stderr:\n%s", o.stderr)
	}
	return m[1]
}

func ctxFor(t *testing.T, d time.Duration) context.Context { return harness.Ctx(t, d) }
