package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"text/tabwriter"
)

// The report: what a run measured, its JSON object and its table.

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
