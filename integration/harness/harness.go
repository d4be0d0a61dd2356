package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// BrokerURL is the broker the tests use: $STALK_BROKER_URL, or the local
// RabbitMQ with guest/guest.
func BrokerURL() string {
	if u := os.Getenv("STALK_BROKER_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// Python is the interpreter that runs Celery: $STALK_PYTHON or
// /usr/bin/python3 (Debian's, where python3-celery installs).
func Python() string {
	if p := os.Getenv("STALK_PYTHON"); p != "" {
		return p
	}
	return "/usr/bin/python3"
}

// RunID is unique to this test binary's run; queue and worker names
// include it so that runs never collide.
var RunID = func() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}()

// Name returns a name unique to this run, e.g. for a queue.
func Name(parts ...string) string {
	return "stalk-test-" + RunID + "-" + strings.Join(parts, "-")
}

// AppDir is the folder holding tasks.py.
func AppDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "celeryapp")
}

// Lock modes for Main.
const (
	Shared    = syscall.LOCK_SH // ordinary suites
	Exclusive = syscall.LOCK_EX // suites that stop, restart or disrupt the broker
)

const lockPath = "/tmp/stalk-broker.lock"

// Main runs m after checking the broker and taking the broker lock in the
// given mode, and after running setup (start workers there, once per test
// binary). Call it from TestMain: os.Exit(harness.Main(m, harness.Shared)).
// A setup error fails the run.
func Main(m *testing.M, mode int, setup ...func() error) int {
	if err := Reachable(5 * time.Second); err != nil {
		if os.Getenv("STALK_REQUIRE_BROKER") == "1" {
			fmt.Fprintf(os.Stderr, "FAIL: RabbitMQ at %s is not reachable and STALK_REQUIRE_BROKER=1: %v\n", redact(BrokerURL()), err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "SKIP: RabbitMQ at %s is not reachable (%v); integration tests skipped. Set STALK_REQUIRE_BROKER=1 to make this a failure.\n", redact(BrokerURL()), err)
		return 0
	}
	if err := exec.Command(Python(), "-c", "import celery").Run(); err != nil {
		msg := fmt.Sprintf("%s cannot import celery (%v): install Debian's python3-celery, or set STALK_PYTHON", Python(), err)
		if os.Getenv("STALK_REQUIRE_BROKER") == "1" {
			fmt.Fprintln(os.Stderr, "FAIL: "+msg)
			return 1
		}
		fmt.Fprintln(os.Stderr, "SKIP: "+msg)
		return 0
	}
	unlock, err := lockBroker(mode)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	defer unlock()
	for _, fn := range setup {
		if err := fn(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: test setup: %v\n", err)
			stopAll()
			return 1
		}
	}
	code := m.Run()
	stopAll()
	return code
}

// lockBroker takes the broker lock in mode (Shared or Exclusive) and
// returns the function that releases it.
func lockBroker(mode int) (unlock func(), err error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("broker lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), mode); err != nil {
		f.Close()
		return nil, fmt.Errorf("broker lock: %w", err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// Reachable dials the broker once.
func Reachable(timeout time.Duration) error {
	u, err := url.Parse(BrokerURL())
	if err != nil {
		return err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5672")
	}
	c, err := net.DialTimeout("tcp", host, timeout)
	if err != nil {
		return err
	}
	c.Close()
	conn, err := amqp091.DialConfig(BrokerURL(), amqp91Config(timeout))
	if err != nil {
		return err
	}
	return conn.Close()
}

func amqp91Config(timeout time.Duration) amqp091.Config {
	return amqp091.Config{Dial: amqp091.DefaultDial(timeout)}
}

func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// WorkerConfig describes a Celery worker to start.
type WorkerConfig struct {
	Queue       string            // queue(s) to consume, comma-separated; default: a fresh Name("q")
	Name        string            // nodename prefix; the worker is Name@<host>; default: a fresh name
	Concurrency int               // default 2
	Pool        string            // prefork (default), solo, threads
	Events      bool              // -E: send task events
	Env         map[string]string // extra environment, e.g. STALK_RESULT_PERSISTENT=1
	Args        []string          // extra worker arguments
	ReadyWait   time.Duration     // default 60 s
	BrokerURL   string            // broker to consume from, e.g. Cluster.URL(2) (the // form for Celery is made here); default BrokerURL()
}

// Worker is a running Celery worker process.
type Worker struct {
	Queue    string
	Hostname string // full nodename, e.g. "w-1a2b3c4d-1@host"
	cmd      *exec.Cmd
	logMu    sync.Mutex
	log      bytes.Buffer
	done     chan struct{}
	stopOnce sync.Once
}

var (
	workersMu sync.Mutex
	workers   []*Worker
	seq       int
)

// StartWorker starts a worker and waits until it reports ready.
func StartWorker(cfg WorkerConfig) (*Worker, error) {
	workersMu.Lock()
	seq++
	n := seq
	workersMu.Unlock()
	if cfg.Queue == "" {
		cfg.Queue = Name("q", fmt.Sprint(n))
	}
	if cfg.Name == "" {
		cfg.Name = fmt.Sprintf("w-%s-%d", RunID, n)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 2
	}
	if cfg.Pool == "" {
		cfg.Pool = "prefork"
	}
	if cfg.ReadyWait == 0 {
		cfg.ReadyWait = 60 * time.Second
	}
	if cfg.BrokerURL == "" {
		cfg.BrokerURL = BrokerURL()
	}
	host, _ := os.Hostname()
	args := []string{"-m", "celery", "-A", "tasks", "worker",
		"-Q", cfg.Queue, "-n", cfg.Name + "@%h",
		"-c", fmt.Sprint(cfg.Concurrency), "-P", cfg.Pool,
		"--without-mingle", "--without-gossip", "-l", "info"}
	if cfg.Events {
		args = append(args, "-E")
	}
	args = append(args, cfg.Args...)
	cmd := exec.Command(Python(), args...)
	cmd.Dir = AppDir()
	cmd.Env = append(os.Environ(), "STALK_BROKER_URL="+celeryURL(cfg.BrokerURL), "PYTHONUNBUFFERED=1")
	for k, v := range cfg.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	w := &Worker{Queue: cfg.Queue, Hostname: cfg.Name + "@" + host, cmd: cmd, done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start celery worker: %w", err)
	}
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			w.logMu.Lock()
			if w.log.Len() < 4<<20 {
				w.log.WriteString(line + "\n")
			}
			w.logMu.Unlock()
			if strings.Contains(line, " ready.") {
				readyOnce.Do(func() { close(ready) })
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(w.done)
	}()
	workersMu.Lock()
	workers = append(workers, w)
	workersMu.Unlock()
	select {
	case <-ready:
		return w, nil
	case <-w.done:
		return nil, fmt.Errorf("celery worker exited before it was ready:\n%s", w.Log())
	case <-time.After(cfg.ReadyWait):
		w.Kill()
		return nil, fmt.Errorf("celery worker not ready after %s:\n%s", cfg.ReadyWait, w.Log())
	}
}

// celeryURL turns amqp://h:p/ (the default vhost) into Celery's amqp://h:p//.
func celeryURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	if p.Path == "" || p.Path == "/" {
		return strings.TrimSuffix(u, "/") + "//"
	}
	return u
}

// Log returns what the worker has printed so far.
func (w *Worker) Log() string {
	w.logMu.Lock()
	defer w.logMu.Unlock()
	return w.log.String()
}

// Pid is the worker's main process id.
func (w *Worker) Pid() int { return w.cmd.Process.Pid }

// Done is closed when the worker process has exited.
func (w *Worker) Done() <-chan struct{} { return w.done }

// Stop asks the worker to shut down warmly (SIGTERM), and kills it if it
// has not exited within 10 s.
func (w *Worker) Stop() {
	w.stopOnce.Do(func() {
		_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-w.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
			<-w.done
		}
	})
}

// Kill kills the worker and its pool processes at once (SIGKILL).
func (w *Worker) Kill() {
	w.stopOnce.Do(func() {
		_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
		<-w.done
	})
}

func stopAll() {
	workersMu.Lock()
	ws := append([]*Worker(nil), workers...)
	workersMu.Unlock()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() { defer wg.Done(); w.Stop() }()
	}
	wg.Wait()
}

// Ctx returns a context bounded by d and cancelled at the end of t.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Rabbitmqctl runs rabbitmqctl with args and returns its output.
func Rabbitmqctl(args ...string) (string, error) {
	out, err := exec.Command("rabbitmqctl", args...).CombinedOutput()
	return string(out), err
}

// PythonScript runs a Python snippet with the tasks module importable and
// the broker URL in STALK_BROKER_URL, and returns its stdout.
func PythonScript(ctx context.Context, script string, env ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, Python(), "-c", script)
	cmd.Dir = AppDir()
	cmd.Env = append(append(os.Environ(), "STALK_BROKER_URL="+celeryURL(BrokerURL())), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("python: %w\n%s", err, stderr.String())
	}
	return out, nil
}
