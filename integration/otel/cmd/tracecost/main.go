// Command tracecost measures what stalk's OpenTelemetry instrumentation
// costs a client, as ratios measured in one run: the same shared-mode
// round trips through a Go echo worker, with no provider set (the global
// defaults, which stay no-ops until an SDK is installed), with explicit
// no-op providers, and with the SDK installed but sampling nothing (and
// its metrics aggregating in memory), round after round.
//
//	go run ./integration/otel/cmd/tracecost [-tasks 4000] [-rounds 3] [-json]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/echoworker"
	"github.com/stalk-dev/stalk/integration/harness"
)

type variant struct {
	name string
	opts func() ([]amqp.Option, func())
}

var variants = []variant{
	{"none", func() ([]amqp.Option, func()) { return nil, func() {} }},
	{"noop", func() ([]amqp.Option, func()) {
		return []amqp.Option{amqp.WithTracerProvider(tracenoop.NewTracerProvider()), amqp.WithMeterProvider(metricnoop.NewMeterProvider())}, func() {}
	}},
	{"sdk-unsampled", func() ([]amqp.Option, func()) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		return []amqp.Option{amqp.WithTracerProvider(tp), amqp.WithMeterProvider(mp), amqp.WithPropagator(propagation.TraceContext{})},
			func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) }
	}},
}

type sample struct {
	Variant    string  `json:"variant"`
	PerSecond  float64 `json:"results_per_second"`
	CPUPerTask float64 `json:"client_cpu_us_per_task"`
}

func cpu() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func run(ctx context.Context, url, queue string, v variant, tasks int) (sample, error) {
	opts, done := v.opts()
	defer done()
	c, err := amqp.Dial(ctx, url, append(opts, amqp.WithReplyMode(amqp.Shared), amqp.WithDefaultQueue(queue),
		amqp.WithConnectionName(harness.Name("tracecost", v.name)), amqp.WithLogger(zerolog.Nop()))...)
	if err != nil {
		return sample{}, err
	}
	defer c.Close()
	const workers = 32
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	startCPU, start := cpu(), time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				r, err := c.Send(ctx, "echo", amqp.Args(i))
				if err == nil {
					_, err = r.Get(ctx)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range tasks {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed, used := time.Since(start), cpu()-startCPU
	select {
	case err := <-errs:
		return sample{}, err
	default:
	}
	return sample{Variant: v.name, PerSecond: float64(tasks) / elapsed.Seconds(), CPUPerTask: float64(used.Microseconds()) / float64(tasks)}, nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func main() {
	tasks := flag.Int("tasks", 4000, "round trips per variant and round")
	rounds := flag.Int("rounds", 3, "rounds; each runs every variant back to back")
	asJSON := flag.Bool("json", false, "print one JSON object")
	flag.Parse()
	ctx := context.Background()
	url := harness.BrokerURL()
	queue := harness.Name("tracecost")
	w, err := echoworker.Start(ctx, echoworker.Config{URL: url, Queue: queue})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer w.Stop()
	var all []sample
	ratios := map[string]map[string][]float64{} // variant → metric → per-round ratio to "none"
	for r := 0; r < *rounds; r++ {
		var base sample
		for _, v := range variants {
			s, err := run(ctx, url, queue, v, *tasks)
			if err != nil {
				fmt.Fprintln(os.Stderr, v.name, err)
				os.Exit(1)
			}
			all = append(all, s)
			if v.name == "none" {
				base = s
				continue
			}
			if ratios[v.name] == nil {
				ratios[v.name] = map[string][]float64{}
			}
			ratios[v.name]["throughput"] = append(ratios[v.name]["throughput"], s.PerSecond/base.PerSecond)
			ratios[v.name]["cpu"] = append(ratios[v.name]["cpu"], s.CPUPerTask/base.CPUPerTask)
			if !*asJSON {
				fmt.Printf("round %d %-14s %8.0f results/s (%.2fx none)  %6.1f us CPU/task (%.2fx none)\n", r+1, v.name,
					s.PerSecond, s.PerSecond/base.PerSecond, s.CPUPerTask, s.CPUPerTask/base.CPUPerTask)
			}
		}
	}
	summary := map[string]map[string]float64{}
	for v, m := range ratios {
		summary[v] = map[string]float64{"throughput_ratio": median(m["throughput"]), "cpu_ratio": median(m["cpu"])}
	}
	if *asJSON {
		_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"tasks": *tasks, "rounds": *rounds, "samples": all, "median_ratio_to_none": summary})
		return
	}
	for _, v := range []string{"noop", "sdk-unsampled"} {
		fmt.Printf("median over %d rounds, %s vs none: throughput %.2fx, client CPU per task %.2fx\n", *rounds, v, summary[v]["throughput_ratio"], summary[v]["cpu_ratio"])
	}
}
