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
	"io"
	"math"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
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

type report struct {
	floor, floorNoConfirm, shared, pertask, python modeResult
	ceiling                                        float64
	ceilingOK                                      bool
	ceilingCPU                                     float64 // µs per queue, median
	pythonMissing                                  string
	pending                                        *pendingReport
	pendingPerTask                                 *pendingReport
	channelsShared, channelsPerTask                *int
	channelsPerTaskIdle, channelsPerTaskPending    int
	failures                                       []string
	// Ratios of each round's back-to-back pair; the reported ratio is
	// their median (with one round, simply that round's ratio).
	roundRatios struct {
		sharedVsFloor, sharedP50VsFloor, sharedCPUVsFloor, pertaskVsCeiling []float64
	}
	notes   []string
	cluster *clusterReport // -cluster only
}

// channelsFromClient reports whether any channel count in the report came
// from the client's own counter because rabbitmqctl could not count it.
func (r *report) channelsFromClient() bool {
	return channelsFromClient.Load() || (r.pending != nil && r.pending.ChannelsSource != "rabbitmqctl")
}

func (r *report) fail(part string, err error) {
	r.failures = append(r.failures, fmt.Sprintf("%s: %v", part, err))
	fmt.Fprintf(os.Stderr, "bench: %s failed: %v\n", part, err)
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

// median picks, by throughput, the median of several rounds.
func median(rs []modeResult) modeResult {
	if len(rs) == 0 {
		return modeResult{}
	}
	s := append([]modeResult(nil), rs...)
	sort.Slice(s, func(i, j int) bool { return s[i].PerS < s[j].PerS })
	m := s[len(s)/2]
	p50 := make([]float64, len(s))
	p99 := make([]float64, len(s))
	for i, r := range s {
		p50[i], p99[i] = r.P50, r.P99
	}
	sort.Float64s(p50)
	sort.Float64s(p99)
	m.P50, m.P99 = p50[len(p50)/2], p99[len(p99)/2]
	return m
}

func ratio(a, b float64, ok bool) any {
	if !ok || b == 0 || a == 0 {
		return nil
	}
	return round3(a / b)
}

// medianRatio is the median of the per-round ratios, or nil without any.
func medianRatio(rs []float64) any {
	if len(rs) == 0 {
		return nil
	}
	s := append([]float64(nil), rs...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return round3(m)
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func num(r modeResult, f float64) any {
	if !r.OK {
		return nil
	}
	return round3(f)
}

func (r *report) jsonObject() map[string]any {
	o := map[string]any{
		"floor_per_s":                     num(r.floor, r.floor.PerS),
		"floor_p50_ms":                    num(r.floor, r.floor.P50),
		"floor_p99_ms":                    num(r.floor, r.floor.P99),
		"floor_noconfirm_per_s":           num(r.floorNoConfirm, r.floorNoConfirm.PerS),
		"floor_noconfirm_p50_ms":          num(r.floorNoConfirm, r.floorNoConfirm.P50),
		"floor_noconfirm_p99_ms":          num(r.floorNoConfirm, r.floorNoConfirm.P99),
		"shared_per_s":                    num(r.shared, r.shared.PerS),
		"shared_p50_ms":                   num(r.shared, r.shared.P50),
		"shared_p99_ms":                   num(r.shared, r.shared.P99),
		"pertask_per_s":                   num(r.pertask, r.pertask.PerS),
		"pertask_p50_ms":                  num(r.pertask, r.pertask.P50),
		"pertask_p99_ms":                  num(r.pertask, r.pertask.P99),
		"floor_cpu_us_per_task":           num(r.floor, r.floor.CPUus),
		"shared_cpu_us_per_task":          num(r.shared, r.shared.CPUus),
		"pertask_cpu_us_per_task":         num(r.pertask, r.pertask.CPUus),
		"python_cpu_us_per_task":          num(r.python, r.python.CPUus),
		"python_stalls":                   num(r.python, float64(r.python.Stalls)),
		"python_per_s_without_stalls":     num(r.python, r.python.NoStallPerS),
		"shared_vs_python_without_stalls": ratio(r.shared.PerS, r.python.NoStallPerS, r.shared.OK && r.python.OK),
		"python_per_s":                    num(r.python, r.python.PerS),
		"python_p50_ms":                   num(r.python, r.python.P50),
		"python_p99_ms":                   num(r.python, r.python.P99),
		"queue_ceiling_per_s":             nil,
		"shared_vs_floor":                 medianRatio(r.roundRatios.sharedVsFloor),
		"pertask_vs_ceiling":              medianRatio(r.roundRatios.pertaskVsCeiling),
		"shared_p50_vs_floor_p50":         medianRatio(r.roundRatios.sharedP50VsFloor),
		"shared_cpu_vs_floor_cpu":         medianRatio(r.roundRatios.sharedCPUVsFloor),
		"shared_vs_python":                ratio(r.shared.PerS, r.python.PerS, r.shared.OK && r.python.OK),
		"floor_vs_python":                 ratio(r.floor.PerS, r.python.PerS, r.floor.OK && r.python.OK),
		"pending100k_rss_mb":              nil,
		"pending_count":                   nil,
		"channels_shared":                 nil,
		"channels_pertask":                nil,
		"channels_pertask_pending":        nil,
		"failures":                        append([]string{}, r.failures...),
	}
	if r.ceilingOK {
		o["queue_ceiling_per_s"] = round3(r.ceiling)
		o["queue_ceiling_cpu_us_per_queue"] = round3(r.ceilingCPU)
	}
	if p := r.pending; p != nil {
		o["pending100k_rss_mb"] = round3(p.RSSMB)
		o["pending_count"] = p.Pending
		o["pending_baseline_rss_mb"] = round3(p.BaselineRSSMB)
		o["pending_heap_mb"] = round3(p.HeapMB)
		o["pending_goroutines"] = p.Goroutines
		o["channels_shared_idle"] = p.ChannelsIdle
		o["channels_shared"] = p.ChannelsPending
	} else if r.channelsShared != nil {
		o["channels_shared"] = *r.channelsShared
	}
	if r.channelsPerTask != nil {
		o["channels_pertask"] = *r.channelsPerTask
		if r.channelsPerTaskPending > 0 {
			o["channels_pertask_idle"] = r.channelsPerTaskIdle
			o["channels_pertask_pending"] = r.channelsPerTaskPending
		}
	}
	if p := r.pendingPerTask; p != nil {
		o["pending_pertask_count"] = p.Pending
		o["pending_pertask_rss_mb"] = round3(p.RSSMB)
		o["pending_pertask_baseline_rss_mb"] = round3(p.BaselineRSSMB)
		o["pending_pertask_heap_mb"] = round3(p.HeapMB)
		o["pending_pertask_goroutines"] = p.Goroutines
	}
	o["channels_source"] = "rabbitmqctl"
	if r.channelsFromClient() {
		o["channels_source"] = "client counters (rabbitmqctl could not count them)"
	}
	if r.pythonMissing != "" {
		o["python_missing"] = r.pythonMissing
	}
	o["targets"] = map[string]any{
		"shared_vs_floor>=0.8":          cmp(o["shared_vs_floor"], func(f float64) bool { return f >= 0.8 }),
		"shared_p50_vs_floor_p50<=1.25": cmp(o["shared_p50_vs_floor_p50"], func(f float64) bool { return f <= 1.25 }),
		"shared_cpu_vs_floor_cpu<=1.25": cmp(o["shared_cpu_vs_floor_cpu"], func(f float64) bool { return f <= 1.25 }),
		"pertask_vs_ceiling>=0.7":       cmp(o["pertask_vs_ceiling"], func(f float64) bool { return f >= 0.7 }),
		"shared_vs_python>=15":          cmp(o["shared_vs_python"], func(f float64) bool { return f >= 15 }),
		"pending100k_rss_mb<=200":       cmp(o["pending100k_rss_mb"], func(f float64) bool { return f <= 200 }),
	}
	r.clusterJSON(o)
	return o
}

func cmp(v any, ok func(float64) bool) any {
	f, isNum := v.(float64)
	if !isNum {
		return nil
	}
	return ok(f)
}

func (r *report) print(out io.Writer, cfg *config) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "mode\tper s\tp50 ms\tp99 ms\tCPU µs/task\tvs\t\n")
	row := func(name string, m modeResult, vs string) {
		if !m.OK {
			return
		}
		cpu := ""
		if m.CPUus > 0 {
			cpu = fmt.Sprintf("%.1f", m.CPUus)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.3f\t%s\t%s\t\n", name, m.PerS, m.P50, m.P99, cpu, vs)
	}
	o := r.jsonObject()
	f := func(key, label string) string {
		if v, ok := o[key].(float64); ok {
			return fmt.Sprintf("%.2f× %s", v, label)
		}
		return ""
	}
	row("floor (amqp091-go, confirms)", r.floor, "")
	row("floor without confirms (info)", r.floorNoConfirm, "")
	row("stalk shared", r.shared, f("shared_vs_floor", "floor")+"  p50 "+f("shared_p50_vs_floor_p50", "floor")+"  CPU "+f("shared_cpu_vs_floor_cpu", "floor"))
	if r.ceilingOK {
		fmt.Fprintf(tw, "queue ceiling (%d channels)\t%.0f\t\t\t%.1f\t\t\n", cfg.lanes, r.ceiling, r.ceilingCPU)
	}
	row("stalk per-task", r.pertask, f("pertask_vs_ceiling", "ceiling"))
	row("python celery (rpc://)", r.python, "")
	if r.shared.OK && r.python.OK {
		fmt.Fprintf(tw, "stalk shared vs python\t\t\t\t\t%s\t\n", f("shared_vs_python", "python"))
	}
	if r.floor.OK && r.python.OK {
		fmt.Fprintf(tw, "floor vs python (bound)\t\t\t\t\t%s\t\n", f("floor_vs_python", "python"))
	}
	tw.Flush()
	if r.pythonMissing != "" {
		fmt.Fprintf(out, "python: not measured: %s\n", r.pythonMissing)
	}
	if r.python.OK && r.python.Stalls > 0 && r.shared.OK {
		fmt.Fprintf(out, "python: %d get() calls in the throughput run took 0.5 s or more (the rpc backend waiting out its 1 s drain timeout); they are part of its number. Without them: %.0f/s, stalk shared %.2f× that\n",
			r.python.Stalls, r.python.NoStallPerS, r.shared.PerS/r.python.NoStallPerS)
	}
	if p := r.pending; p != nil {
		fmt.Fprintf(out, "memory: %d pending results (shared mode): RSS %.1f MB (%.1f MB before sending; Go heap in use %.1f MB), %d goroutines\n",
			p.Pending, p.RSSMB, p.BaselineRSSMB, p.HeapMB, p.Goroutines)
		fmt.Fprintf(out, "channels, shared mode: %d with 1 pending result, %d with %d pending\n", p.ChannelsIdle, p.ChannelsPending, p.Pending)
	}
	if p := r.pendingPerTask; p != nil {
		fmt.Fprintf(out, "memory: %d pending results (per-task mode): RSS %.1f MB (%.1f MB before sending; Go heap in use %.1f MB), %d goroutines\n",
			p.Pending, p.RSSMB, p.BaselineRSSMB, p.HeapMB, p.Goroutines)
	}
	if r.channelsPerTask != nil && r.channelsPerTaskPending > 0 {
		fmt.Fprintf(out, "channels, per-task mode: %d with 1 pending result, %d with %d pending\n", r.channelsPerTaskIdle, *r.channelsPerTask, r.channelsPerTaskPending)
	} else if r.channelsPerTask != nil {
		fmt.Fprintf(out, "channels, per-task mode: %d after the throughput run\n", *r.channelsPerTask)
	}
	if r.channelsFromClient() {
		fmt.Fprintf(out, "channels: counted by the client, not the broker (rabbitmqctl could not count them)\n")
	}
	for _, n := range r.notes {
		fmt.Fprintln(out, "note:", n)
	}
	for _, fl := range r.failures {
		fmt.Fprintln(out, "FAILED:", fl)
	}
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
