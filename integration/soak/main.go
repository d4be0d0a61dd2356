// Command soak runs stalk for a long time against faults and checks every
// result: an in-process echo worker (integration/echoworker) on a task
// queue of its own, and a stalk client that sends tasks at a steady rate
// with unique arguments and counts, per task, how its result settled.
//
//	go run ./integration/soak                                  # shared mode, 10 minutes, the local broker
//	go run ./integration/soak -mode per-task -duration 30s
//	go run ./integration/soak -cluster -duration 10m -json     # a 3-node test cluster
//
// A task is lost when its result has not come within -deadline (60 s) of
// the end of the run, wrong when the value is not the argument it was sent
// with, and settled twice when its Then callback ran more than once. The
// client's Stats().Duplicates (a final state received again, which an
// at-least-once resend after a lost confirm may cause) are reported, not
// counted as failures. The program exits 1 if anything was lost, wrong,
// failed or settled twice.
//
// Faults, every -kill-every (0: none):
//
//   - one node (the broker at $STALK_BROKER_URL): the client's results
//     and publishing connections are closed broker-side, alternately, by
//     connection name with rabbitmqctl close_connection;
//   - -cluster: a 3-node cluster is started (integration/harness
//     StartCluster, ports 5681-5683); the echo worker and the task queue
//     are on node 1, which stays up, and the client is dialled with the
//     three URLs (node 2's first). Faults alternate between kill -9 of the
//     node the client's results connection is on (then restarted) and
//     stop_app of the node that leads the reply queue (the quorum shared
//     queue in shared mode; in per-task mode the node of the newest
//     per-task queue), then start_app. A fault never touches node 1: when
//     its target is node 1, the client's connection there is closed
//     instead, or, for a quorum queue led by node 1, leadership is moved
//     first (rabbit_quorum_queue:transfer_leadership).
//
// Every -report it prints one line (and with -json a JSON object after it),
// and at the end a summary line. SIGINT or SIGTERM ends the run early: the
// summary is printed and the cluster torn down.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/stalk-dev/stalk/amqp"
)

type config struct {
	mode        amqp.ReplyMode
	modeName    string
	duration    time.Duration
	cluster     bool
	rate        float64
	senders     int
	killEvery   time.Duration
	down        time.Duration
	report      time.Duration
	jsonOut     bool
	deadline    time.Duration
	sendTimeout time.Duration
	url         string
	logLevel    string
	confirm     bool          // the echo worker publishes results with confirms and mandatory
	expires     time.Duration // per-task reply queues' x-expires
}

func main() { os.Exit(run()) }

func run() int {
	cfg := &config{}
	def := os.Getenv("STALK_BROKER_URL")
	if def == "" {
		def = "amqp://guest:guest@127.0.0.1:5672/"
	}
	flag.StringVar(&cfg.modeName, "mode", "shared", "reply mode: shared or per-task")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Minute, "how long to send tasks")
	flag.BoolVar(&cfg.cluster, "cluster", false, "start a 3-node RabbitMQ cluster (ports 5681-5683) and fault its nodes")
	flag.Float64Var(&cfg.rate, "rate", 200, "tasks per second, all senders together")
	flag.IntVar(&cfg.senders, "senders", 4, "sending goroutines")
	flag.DurationVar(&cfg.killEvery, "kill-every", 30*time.Second, "time between faults (0: no faults)")
	flag.DurationVar(&cfg.down, "down", 5*time.Second, "with -cluster: how long a killed or stopped node stays down")
	flag.DurationVar(&cfg.report, "report", 30*time.Second, "time between report lines")
	flag.BoolVar(&cfg.jsonOut, "json", false, "also print each report, and the summary, as a JSON object")
	flag.DurationVar(&cfg.deadline, "deadline", 60*time.Second, "after the run, how long to wait for the last results before they count as lost")
	flag.DurationVar(&cfg.sendTimeout, "send-timeout", 60*time.Second, "limit of one Send (it waits while the broker is unreachable)")
	flag.StringVar(&cfg.url, "url", def, "broker URL without -cluster (default $STALK_BROKER_URL or the local RabbitMQ)")
	flag.StringVar(&cfg.logLevel, "log", "warn", "level of the client's log on stderr: debug, info, warn, error, disabled")
	flag.BoolVar(&cfg.confirm, "confirm-results", false, "the echo worker publishes results with confirms and mandatory, and a lost task's line says what the broker answered (costs memory: one entry per task)")
	flag.Parse()
	mode, err := amqp.ParseReplyMode(cfg.modeName)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	cfg.mode = mode
	cfg.expires = time.Minute
	if cfg.rate <= 0 || cfg.senders <= 0 || cfg.duration <= 0 || cfg.report <= 0 || cfg.killEvery < 0 {
		fmt.Fprintln(os.Stderr, "soak: -rate, -senders, -duration and -report must be positive, -kill-every not negative")
		return 2
	}

	unlock, err := brokerLock()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	defer unlock()

	// The first signal ends the run early (summary, teardown); a second
	// one while tearing down exits at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, interrupt := context.WithCancelCause(context.Background())
	defer interrupt(nil)
	var cl *clusterEnv
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "soak: %s: ending the run\n", s)
		interrupt(fmt.Errorf("interrupted by %s", s))
		s = <-sigs
		fmt.Fprintf(os.Stderr, "soak: %s again: tearing down now\n", s)
		if cl != nil {
			_ = cl.c.Close()
		}
		os.Exit(1)
	}()

	b := make([]byte, 4)
	_, _ = rand.Read(b)
	prefix := "stalk-soak-" + hex.EncodeToString(b)

	env := &environment{prefix: prefix}
	if cfg.cluster {
		var err error
		cl, err = startCluster(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			return 1
		}
		defer func() {
			begin := time.Now()
			if err := cl.c.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "soak: cluster teardown:", err)
			} else {
				fmt.Fprintf(os.Stderr, "soak: cluster torn down in %s\n", time.Since(begin).Round(100*time.Millisecond))
			}
		}()
		env.cluster = cl
		env.ctl = cl.ctl
		env.workerURL = cl.c.URL(protectedNode)
		env.clientURL = cl.clientURL()
	} else {
		env.ctl = localCtl
		env.workerURL = cfg.url
		env.clientURL = cfg.url
	}

	s, err := newSoak(ctx, cfg, env)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	sum := s.run(ctx)
	s.close()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		sum.Interrupted = cause.Error()
	}
	s.printSummary(sum)
	if cl != nil && (sum.failed() || sum.faultErrors() > 0) {
		dst := "/tmp/" + prefix + "-logs"
		if err := cl.saveLogs(dst); err != nil {
			fmt.Fprintln(os.Stderr, "soak: saving the nodes' logs:", err)
		}
		fmt.Printf("soak: the cluster nodes' logs are in %s\n", dst)
	}
	if sum.failed() {
		return 1
	}
	return 0
}

// brokerLockPath is the lock the integration suites share: ordinary suites
// take it shared, the ones that stop or restart the default broker take it
// exclusively. The soak takes it shared, as the bench does, so that it
// never runs while the default node is being restarted.
const brokerLockPath = "/tmp/stalk-broker.lock"

func brokerLock() (unlock func(), err error) {
	f, err := os.OpenFile(brokerLockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("broker lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		fmt.Fprintln(os.Stderr, "soak: waiting for the broker lock (a suite that restarts the broker is running)")
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
			f.Close()
			return nil, fmt.Errorf("broker lock: %w", err)
		}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
