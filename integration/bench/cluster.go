package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/echoworker"
	"github.com/stalk-dev/stalk/integration/harness"
)

// clusterReport holds what -cluster measures on a 3-node cluster: stalk's
// shared mode with a quorum reply queue against a classic one, and the
// broker's per-task-queue ceiling for quorum queues against classic ones.
type clusterReport struct {
	startup         time.Duration
	node            int // the node the client, the echo worker and the ceiling use
	classic, quorum modeResult
	ceilClassic     float64 // queues/s, median round
	ceilQuorum      float64
	ceilClassicCPU  float64 // µs per queue, median round
	ceilQuorumCPU   float64
	ceilingN        int
	roundRatios     struct {
		quorumVsClassic, quorumP50VsClassic, ceilQuorumVsClassic []float64
	}
}

// clusterNode is the node the cluster bench connects to.
const clusterNode = 1

// runCluster starts a 3-node cluster (integration/harness StartCluster, on
// 5681-5683 beside the default node, which it does not touch), runs an echo
// worker against node 1 and measures, in -rounds rounds, shared mode with a
// classic and with a quorum reply queue back to back, then the per-task
// queue ceiling with classic and with quorum queues back to back.
func runCluster(ctx context.Context, cfg *config) (*report, error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	cl, err := harness.StartCluster(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	defer func() {
		if err := cl.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: cluster teardown:", err)
		}
	}()
	rep := &report{cluster: &clusterReport{startup: cl.StartupTime(), node: clusterNode, ceilingN: cfg.clusterCeilingN}}
	cr := rep.cluster
	progress := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
	}
	progress("cluster: 3 nodes running in %s; client, echo worker and ceiling on node %d", cl.StartupTime().Round(100*time.Millisecond), clusterNode)
	sub := *cfg
	sub.url = cl.URL(clusterNode)
	cfg = &sub

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	w, err := echoworker.Start(wctx, echoworker.Config{
		URL: cfg.url, Queue: cfg.taskQueue, Channels: cfg.workerChannels,
		Prefetch: cfg.workerPrefetch, Name: cfg.prefix + " echoworker",
	})
	cancel()
	if err != nil {
		return nil, err
	}
	defer deleteQueue(cfg, cfg.taskQueue)
	defer w.Stop()

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
	var classics, quorums []modeResult
	var ceilC, ceilQ, cpuC, cpuQ []float64
	for round := 0; round < cfg.rounds && ctx.Err() == nil; round++ {
		// Each pair runs back to back, in alternating order, so that a
		// machine that slows down during a round slows both alike.
		var classic, quorum modeResult
		shared := func(qt amqp.QueueType) {
			name := "classic"
			if qt == amqp.Quorum {
				name = "quorum"
			}
			progress("cluster: stalk shared, %s reply queue, round %d", name, round+1)
			r, err := runStalkShared(part(), cfg, "cluster-shared-"+name, amqp.WithReplyQueueType(qt))
			if err != nil {
				rep.fail("cluster-shared-"+name, err)
				return
			}
			progress("  %s", r)
			if qt == amqp.Quorum {
				quorum = r
				quorums = append(quorums, r)
			} else {
				classic = r
				classics = append(classics, r)
			}
		}
		if round%2 == 0 {
			shared(amqp.Classic)
			shared(amqp.Quorum)
		} else {
			shared(amqp.Quorum)
			shared(amqp.Classic)
		}
		if classic.OK && quorum.OK {
			cr.roundRatios.quorumVsClassic = append(cr.roundRatios.quorumVsClassic, quorum.PerS/classic.PerS)
			cr.roundRatios.quorumP50VsClassic = append(cr.roundRatios.quorumP50VsClassic, quorum.P50/classic.P50)
		}

		var qc, qq float64
		ceiling := func(quorum bool) {
			name, stem, extra := "classic", fmt.Sprintf("ceilc%d", round), amqp091.Table(nil)
			if quorum {
				name, stem, extra = "quorum", fmt.Sprintf("ceilq%d", round), amqp091.Table{"x-queue-type": "quorum"}
			}
			progress("cluster: queue ceiling, %d %s queues on %d channels, round %d", cfg.clusterCeilingN, name, cfg.lanes, round+1)
			perS, cpu, err := runCeilingWith(part(), cfg, cfg.clusterCeilingN, stem, extra)
			if err != nil {
				rep.fail("cluster-ceiling-"+name, err)
				return
			}
			progress("  %.0f queues/s, %.1f µs CPU per queue", perS, cpu)
			if quorum {
				qq = perS
				ceilQ, cpuQ = append(ceilQ, perS), append(cpuQ, cpu)
			} else {
				qc = perS
				ceilC, cpuC = append(ceilC, perS), append(cpuC, cpu)
			}
		}
		if round%2 == 0 {
			ceiling(false)
			ceiling(true)
		} else {
			ceiling(true)
			ceiling(false)
		}
		if qc > 0 && qq > 0 {
			cr.roundRatios.ceilQuorumVsClassic = append(cr.roundRatios.ceilQuorumVsClassic, qq/qc)
		}
	}
	cr.classic, cr.quorum = median(classics), median(quorums)
	cr.ceilClassic, cr.ceilQuorum = medianOf(ceilC), medianOf(ceilQ)
	cr.ceilClassicCPU, cr.ceilQuorumCPU = medianOf(cpuC), medianOf(cpuQ)
	if err := w.Err(); err != nil {
		rep.fail("echoworker", err)
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	return rep, nil
}

// runStalkShared measures stalk's shared mode with extra options and
// deletes its reply queue afterwards.
func runStalkShared(ctx context.Context, cfg *config, tag string, extra ...amqp.Option) (modeResult, error) {
	c, err := stalkClient(ctx, cfg, "shared", tag, extra...)
	if err != nil {
		return modeResult{}, err
	}
	defer func() {
		c.Close()
		deleteQueue(cfg, c.ReplyQueue(""))
	}()
	s := &stalkCaller{c: c, queue: cfg.taskQueue}
	return measure(ctx, cfg, s.call)
}

func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// clusterJSON adds the cluster fields to the JSON object; without
// -cluster they are null.
func (r *report) clusterJSON(o map[string]any) {
	keys := []string{
		"cluster_shared_classic_per_s", "cluster_shared_classic_p50_ms", "cluster_shared_classic_p99_ms", "cluster_shared_classic_cpu_us_per_task",
		"cluster_shared_quorum_per_s", "cluster_shared_quorum_p50_ms", "cluster_shared_quorum_p99_ms", "cluster_shared_quorum_cpu_us_per_task",
		"cluster_shared_quorum_vs_classic", "cluster_shared_quorum_p50_vs_classic_p50",
		"cluster_queue_ceiling_classic_per_s", "cluster_queue_ceiling_quorum_per_s",
		"cluster_queue_ceiling_classic_cpu_us_per_queue", "cluster_queue_ceiling_quorum_cpu_us_per_queue",
		"cluster_queue_ceiling_quorum_vs_classic", "cluster_pertask_quorum_cost_vs_classic",
		"cluster_ceiling_queues", "cluster_node", "cluster_startup_s",
	}
	for _, k := range keys {
		o[k] = nil
	}
	o["cluster"] = r.cluster != nil
	c := r.cluster
	if c == nil {
		return
	}
	o["cluster_shared_classic_per_s"] = num(c.classic, c.classic.PerS)
	o["cluster_shared_classic_p50_ms"] = num(c.classic, c.classic.P50)
	o["cluster_shared_classic_p99_ms"] = num(c.classic, c.classic.P99)
	o["cluster_shared_classic_cpu_us_per_task"] = num(c.classic, c.classic.CPUus)
	o["cluster_shared_quorum_per_s"] = num(c.quorum, c.quorum.PerS)
	o["cluster_shared_quorum_p50_ms"] = num(c.quorum, c.quorum.P50)
	o["cluster_shared_quorum_p99_ms"] = num(c.quorum, c.quorum.P99)
	o["cluster_shared_quorum_cpu_us_per_task"] = num(c.quorum, c.quorum.CPUus)
	o["cluster_shared_quorum_vs_classic"] = medianRatio(c.roundRatios.quorumVsClassic)
	o["cluster_shared_quorum_p50_vs_classic_p50"] = medianRatio(c.roundRatios.quorumP50VsClassic)
	if c.ceilClassic > 0 {
		o["cluster_queue_ceiling_classic_per_s"] = round3(c.ceilClassic)
		o["cluster_queue_ceiling_classic_cpu_us_per_queue"] = round3(c.ceilClassicCPU)
	}
	if c.ceilQuorum > 0 {
		o["cluster_queue_ceiling_quorum_per_s"] = round3(c.ceilQuorum)
		o["cluster_queue_ceiling_quorum_cpu_us_per_queue"] = round3(c.ceilQuorumCPU)
	}
	if v, ok := medianRatio(c.roundRatios.ceilQuorumVsClassic).(float64); ok && v > 0 {
		o["cluster_queue_ceiling_quorum_vs_classic"] = v
		o["cluster_pertask_quorum_cost_vs_classic"] = round3(1 / v)
	}
	o["cluster_ceiling_queues"] = c.ceilingN
	o["cluster_node"] = c.node
	o["cluster_startup_s"] = round3(c.startup.Seconds())
}

func (r *report) printCluster(out io.Writer, cfg *config) {
	c := r.cluster
	o := map[string]any{}
	r.clusterJSON(o)
	f := func(key, label string) string {
		if v, ok := o[key].(float64); ok {
			return fmt.Sprintf("%.2f× %s", v, label)
		}
		return ""
	}
	fmt.Fprintf(out, "3-node cluster (started in %s); client, echo worker and ceiling on node %d\n", c.startup.Round(100*time.Millisecond), c.node)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "mode\tper s\tp50 ms\tp99 ms\tCPU µs/task\tvs\t\n")
	row := func(name string, m modeResult, vs string) {
		if m.OK {
			fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.3f\t%.1f\t%s\t\n", name, m.PerS, m.P50, m.P99, m.CPUus, vs)
		}
	}
	row("stalk shared, classic reply queue", c.classic, "")
	row("stalk shared, quorum reply queue", c.quorum, f("cluster_shared_quorum_vs_classic", "classic")+"  p50 "+f("cluster_shared_quorum_p50_vs_classic_p50", "classic"))
	if c.ceilClassic > 0 {
		fmt.Fprintf(tw, "queue ceiling, classic (%d channels)\t%.0f\t\t\t%.1f\t\t\n", cfg.lanes, c.ceilClassic, c.ceilClassicCPU)
	}
	if c.ceilQuorum > 0 {
		fmt.Fprintf(tw, "queue ceiling, quorum (%d channels)\t%.0f\t\t\t%.1f\t%s\t\n", cfg.lanes, c.ceilQuorum, c.ceilQuorumCPU, f("cluster_queue_ceiling_quorum_vs_classic", "classic"))
	}
	tw.Flush()
	if v, ok := o["cluster_pertask_quorum_cost_vs_classic"].(float64); ok {
		fmt.Fprintf(out, "a per-task quorum reply queue would cost %.1f× a classic one (stalk refuses them: WithReplyQueueType(Quorum) is shared mode only)\n", v)
	}
	for _, fl := range r.failures {
		fmt.Fprintln(out, "FAILED:", fl)
	}
}
