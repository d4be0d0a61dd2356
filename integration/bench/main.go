// Command bench measures stalk against the plain amqp091-go floor, the
// broker's own per-task-queue ceiling and Celery's Python client, in one
// run, against one broker and one in-process echo worker
// (integration/echoworker), and reports ratios.
//
//	go run ./integration/bench                 # everything, human table
//	go run ./integration/bench -json           # ... and a JSON object on the last line
//	go run ./integration/bench -smoke          # tiny N of every part; non-zero exit on failure
//	go run ./integration/bench -mode floor,shared -n 50000 -window 128
//	go run ./integration/bench -cluster -json  # quorum against classic on a 3-node cluster
//
// The broker is $STALK_BROKER_URL or amqp://guest:guest@127.0.0.1:5672/.
// Every queue and exchange it creates is named stalk-bench-<random>-… and
// is deleted before it exits.
//
// Modes (-mode, comma-separated, default all):
//
//	floor    plain amqp091-go RPC: one publishing channel with publisher
//	         confirms (stalk's Send returns after the confirm), one reply
//	         queue, correlation by id; plus the same without confirms, for
//	         information
//	shared   stalk, amqp.Shared reply mode
//	ceiling  the broker's per-task-queue ceiling: queue.declare (durable,
//	         x-expires), basic.consume, basic.cancel per task on -lanes
//	         channels; the queues are left to expire, as stalk leaves its
//	         per-task queues, and are deleted after the timed part
//	pertask  stalk, amqp.PerTask reply mode with -lanes lanes
//	python   Celery's own client (send_task + get over rpc://), run by
//	         /usr/bin/python3 ($STALK_PYTHON) from pyclient.py
//	memory   a child process holds -pending results pending in shared
//	         mode (their queue has no worker) and reports its RSS; the
//	         AMQP channels of both modes are counted with rabbitmqctl
//
// Throughput is measured with -window tasks outstanding, latency as -seq
// sequential round trips. The machine is shared and noisy: compare the
// ratios, which are measured side by side. Each of -rounds rounds (default
// 3) runs floor and shared back to back, then the ceiling and per-task;
// throughputs are the median round, ratios the median of the rounds'
// ratios.
//
// With -cluster it starts a 3-node RabbitMQ cluster (integration/harness
// StartCluster, ports 5681-5683, beside the default node) and measures,
// instead of the modes above, on node 1: stalk's shared mode with a quorum
// reply queue against a classic one, and the per-task queue ceiling of
// quorum queues against classic ones (stalk refuses per-task quorum reply
// queues; the ceiling says what they would cost), with the same rounds.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/stalk-dev/stalk/integration/echoworker"
)

type config struct {
	url            string
	prefix         string // stalk-bench-<random>
	taskQueue      string // the echo worker's queue
	n              int
	window         int
	seq            int
	lanes          int
	pending        int
	pendingPerTask int
	pyN            int
	ceilingN       int
	pertaskN       int
	rounds         int
	ceilingExpires time.Duration
	partTimeout    time.Duration
	modes          map[string]bool
	jsonOut        bool
	smoke          bool
	workerChannels int
	workerPrefetch int
	// -cluster: quorum against classic reply queues on a 3-node cluster
	cluster         bool
	clusterCeilingN int
}

func (c *config) warmup() int {
	w := c.n / 10
	if w > 2000 {
		w = 2000
	}
	if w < c.window {
		w = c.window
	}
	return w
}

// modeResult is one mode's numbers. Zero-valued when the mode did not run.
type modeResult struct {
	OK   bool
	PerS float64
	P50  float64 // ms
	P99  float64 // ms
	// CPUus is this process's CPU time per task in the throughput run, in
	// µs: the client's share plus the echo worker's, which is the same in
	// every mode. Less noisy than throughput on a busy machine.
	CPUus float64
	// Stalls counts Python gets that took 0.5 s or more (Celery's rpc
	// backend sometimes waits out its 1 s drain timeout).
	Stalls      int
	NoStallPerS float64 // throughput with the stalls' time taken out
}

func (r modeResult) String() string {
	return fmt.Sprintf("%.0f/s, p50 %.3f ms, p99 %.3f ms, %.1f µs CPU per task", r.PerS, r.P50, r.P99, r.CPUus)
}

var allModes = []string{"floor", "shared", "ceiling", "pertask", "python", "memory"}

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(run())
}

func run() int {
	cfg := &config{}
	def := os.Getenv("STALK_BROKER_URL")
	if def == "" {
		def = "amqp://guest:guest@127.0.0.1:5672/"
	}
	flag.StringVar(&cfg.url, "url", def, "AMQP broker URL (default $STALK_BROKER_URL or the local RabbitMQ)")
	flag.IntVar(&cfg.n, "n", 20000, "tasks per throughput run (floor, shared)")
	flag.IntVar(&cfg.window, "window", 128, "tasks outstanding in throughput runs")
	mode := flag.String("mode", "all", "comma-separated: all, floor, shared, pertask, ceiling, python, memory")
	flag.IntVar(&cfg.lanes, "lanes", 16, "channels for per-task mode and the queue ceiling")
	flag.IntVar(&cfg.seq, "seq", 2000, "sequential round trips for latency")
	flag.IntVar(&cfg.pending, "pending", 100000, "pending results for the memory test")
	flag.IntVar(&cfg.pendingPerTask, "pending-pertask", 10000, "pending results for the per-task memory measurement (for information)")
	flag.IntVar(&cfg.pyN, "pyn", 3000, "tasks for the Python client's throughput run")
	flag.IntVar(&cfg.ceilingN, "ceilingn", 5000, "queues for the ceiling")
	flag.IntVar(&cfg.pertaskN, "pertaskn", 5000, "tasks for per-task mode's throughput run")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds of floor+shared and ceiling+per-task, each pair back to back; throughputs are the median round, ratios the median of the rounds' ratios")
	flag.IntVar(&cfg.workerChannels, "worker-channels", 4, "echo worker channels")
	flag.IntVar(&cfg.workerPrefetch, "worker-prefetch", 256, "echo worker prefetch per channel")
	flag.BoolVar(&cfg.jsonOut, "json", false, "print one JSON object on the last line")
	flag.BoolVar(&cfg.smoke, "smoke", false, "tiny N of every mode; exit non-zero if any part fails")
	flag.DurationVar(&cfg.partTimeout, "timeout", 5*time.Minute, "limit for each part of the run (one mode in one round)")
	flag.BoolVar(&cfg.cluster, "cluster", false, "start a 3-node cluster (ports 5681-5683) and measure shared mode with a quorum against a classic reply queue, and the per-task queue ceiling of quorum against classic queues, instead of the single-node modes")
	flag.IntVar(&cfg.clusterCeilingN, "cluster-ceilingn", 500, "queues per ceiling run with -cluster (quorum and classic alike)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (client, floor and echo worker) to this file")
	flag.Parse()
	cfg.ceilingExpires = 30 * time.Second

	if cfg.smoke {
		cfg.n, cfg.seq, cfg.pyN, cfg.ceilingN, cfg.pertaskN, cfg.pending, cfg.rounds = 200, 50, 100, 200, 200, 2000, 1
		cfg.pendingPerTask = 200
		cfg.clusterCeilingN = 50
		if cfg.partTimeout > 2*time.Minute {
			cfg.partTimeout = 2 * time.Minute
		}
		if cfg.window > 32 {
			cfg.window = 32
		}
	}
	if cfg.n <= 0 || cfg.window <= 0 || cfg.seq <= 0 || cfg.lanes <= 0 || cfg.rounds <= 0 || cfg.clusterCeilingN <= 0 {
		fmt.Fprintln(os.Stderr, "bench: -n, -window, -seq, -lanes, -rounds and -cluster-ceilingn must be positive")
		return 2
	}
	cfg.modes = map[string]bool{}
	for _, m := range strings.Split(*mode, ",") {
		m = strings.TrimSpace(m)
		switch m {
		case "all":
			for _, a := range allModes {
				cfg.modes[a] = true
			}
		case "floor", "shared", "pertask", "ceiling", "python", "memory":
			cfg.modes[m] = true
		default:
			fmt.Fprintf(os.Stderr, "bench: unknown mode %q\n", m)
			return 2
		}
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	cfg.prefix = "stalk-bench-" + hex.EncodeToString(b)
	cfg.taskQueue = cfg.prefix + "-tasks"

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	unlock, err := brokerLock()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer unlock()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var rep *report
	if cfg.cluster {
		rep, err = runCluster(ctx, cfg)
	} else {
		rep, err = bench(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if cfg.cluster {
		rep.printCluster(os.Stdout, cfg)
	} else {
		rep.print(os.Stdout, cfg)
	}
	if cfg.jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(rep.jsonObject())
	}
	if len(rep.failures) > 0 {
		return 1
	}
	return 0
}

func bench(ctx context.Context, cfg *config) (*report, error) {
	rep := &report{}
	needWorker := cfg.modes["floor"] || cfg.modes["shared"] || cfg.modes["pertask"] || cfg.modes["python"]
	var worker *echoworker.Worker
	if needWorker {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		w, err := echoworker.Start(sctx, echoworker.Config{
			URL: cfg.url, Queue: cfg.taskQueue, Channels: cfg.workerChannels,
			Prefetch: cfg.workerPrefetch, Name: cfg.prefix + " echoworker",
		})
		cancel()
		if err != nil {
			return nil, err
		}
		defer deleteQueue(cfg, cfg.taskQueue)
		defer w.Stop()
		worker = w
	}
	// part bounds one part of the run, so that a broker that goes away
	// (stalk waits for it to come back) fails that part instead of hanging.
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	part := func() context.Context {
		pctx, cancel := context.WithTimeout(ctx, cfg.partTimeout)
		cancels = append(cancels, cancel)
		return pctx
	}
	progress := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
	}

	var floors, noconfs, shareds, pertasks []modeResult
	var ceilings, ceilingCPU []float64
	for round := 0; round < cfg.rounds && ctx.Err() == nil; round++ {
		// Floor and shared run back to back, and so do the ceiling and
		// per-task, so that each pair sees the same machine.
		var floor, shared, pertask modeResult
		ceiling := 0.0
		if cfg.modes["floor"] {
			progress("floor (confirms), round %d", round+1)
			if r, err := runFloor(part(), cfg, true); err != nil {
				rep.fail("floor", err)
			} else {
				floor = r
				floors = append(floors, r)
				progress("  %s", r)
			}
		}
		if cfg.modes["shared"] {
			progress("stalk shared, round %d", round+1)
			r, ch, err := runStalk(part(), cfg, "shared", cfg.n)
			if err != nil {
				rep.fail("shared", err)
			} else {
				shared = r
				shareds = append(shareds, r)
				rep.channelsShared = ch
				progress("  %s", r)
			}
		}
		if cfg.modes["floor"] {
			progress("floor (no confirms), round %d", round+1)
			if r, err := runFloor(part(), cfg, false); err != nil {
				rep.fail("floor-noconfirm", err)
			} else {
				noconfs = append(noconfs, r)
				progress("  %s", r)
			}
		}
		if cfg.modes["ceiling"] {
			progress("queue ceiling (%d lanes), round %d", cfg.lanes, round+1)
			if q, cpu, err := runCeiling(part(), cfg, cfg.ceilingN); err != nil {
				rep.fail("ceiling", err)
			} else {
				ceiling = q
				ceilings = append(ceilings, q)
				ceilingCPU = append(ceilingCPU, cpu)
				progress("  %.0f queues/s, %.1f µs CPU per queue", q, cpu)
			}
		}
		if cfg.modes["pertask"] {
			progress("stalk per-task (%d lanes), round %d", cfg.lanes, round+1)
			r, ch, err := runStalk(part(), cfg, "pertask", cfg.pertaskN)
			if err != nil {
				rep.fail("pertask", err)
			} else {
				pertask = r
				pertasks = append(pertasks, r)
				rep.channelsPerTask = ch
				progress("  %s", r)
			}
		}
		if floor.OK && shared.OK {
			rep.roundRatios.sharedVsFloor = append(rep.roundRatios.sharedVsFloor, shared.PerS/floor.PerS)
			rep.roundRatios.sharedP50VsFloor = append(rep.roundRatios.sharedP50VsFloor, shared.P50/floor.P50)
			if floor.CPUus > 0 {
				rep.roundRatios.sharedCPUVsFloor = append(rep.roundRatios.sharedCPUVsFloor, shared.CPUus/floor.CPUus)
			}
		}
		if pertask.OK && ceiling > 0 {
			rep.roundRatios.pertaskVsCeiling = append(rep.roundRatios.pertaskVsCeiling, pertask.PerS/ceiling)
		}
	}
	rep.floor, rep.floorNoConfirm = median(floors), median(noconfs)
	rep.shared, rep.pertask = median(shareds), median(pertasks)
	if len(ceilings) > 0 {
		sort.Float64s(ceilings)
		sort.Float64s(ceilingCPU)
		rep.ceiling, rep.ceilingOK = ceilings[len(ceilings)/2], true
		rep.ceilingCPU = ceilingCPU[len(ceilingCPU)/2]
	}

	if cfg.modes["python"] && ctx.Err() == nil {
		progress("python celery client")
		r, err := runPython(part(), cfg, cfg.pyN)
		switch {
		case errors.Is(err, errNoPython):
			rep.pythonMissing = err.Error()
			progress("%v: python_per_s is null", err)
		case err != nil:
			rep.fail("python", err)
		default:
			rep.python = r
		}
	}
	if cfg.modes["memory"] && ctx.Err() == nil {
		progress("memory: %d pending results in a child process", cfg.pending)
		p, err := runPendingChild(part(), cfg, "shared", cfg.pending)
		switch {
		case err != nil:
			rep.fail("memory", err)
		case p.ChannelsPending > p.ChannelsIdle:
			rep.fail("memory", fmt.Errorf("channels grew from %d to %d with %d pending results", p.ChannelsIdle, p.ChannelsPending, p.Pending))
		default:
			rep.pending = p
		}
		progress("memory: %d pending results in per-task mode in a child process (for information)", cfg.pendingPerTask)
		if pp, err := runPendingChild(part(), cfg, "pertask", cfg.pendingPerTask); err != nil {
			rep.fail("memory-pertask", err)
		} else {
			rep.pendingPerTask = pp
		}
		progress("channels in per-task mode with pending results")
		idle, ch, n, err := pertaskChannels(part(), cfg)
		switch {
		case err != nil:
			rep.fail("channels-pertask", err)
		case ch > idle:
			rep.fail("channels-pertask", fmt.Errorf("channels grew from %d to %d with %d pending results", idle, ch, n))
		default:
			rep.channelsPerTask, rep.channelsPerTaskIdle, rep.channelsPerTaskPending = &ch, idle, n
		}
	}
	if worker != nil && worker.Err() != nil {
		rep.fail("echoworker", worker.Err())
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	return rep, nil
}

// deleteQueue deletes a task queue and the direct exchange of the same
// name that stalk and Celery declare with it (deleting what does not exist
// is not an error on RabbitMQ).
func deleteQueue(cfg *config, name string) {
	conn, err := dial(cfg.url, cfg.prefix+" cleanup")
	if err != nil {
		return
	}
	defer conn.Close()
	if ch, err := conn.Channel(); err == nil {
		_, _ = ch.QueueDelete(name, false, false, false)
		_ = ch.ExchangeDelete(name, false, false)
	}
}

// brokerLockPath is the lock the integration suites share: ordinary suites
// take it shared, the ones that stop or restart the broker take it
// exclusively (see integration/harness). The bench takes it shared, so that
// it never measures a broker that is being restarted.
const brokerLockPath = "/tmp/stalk-broker.lock"

func brokerLock() (unlock func(), err error) {
	f, err := os.OpenFile(brokerLockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("broker lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		fmt.Fprintln(os.Stderr, "bench: waiting for the broker lock (a suite that restarts the broker is running)")
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
