package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// runCeiling measures the broker's own per-task-queue ceiling: on
// cfg.lanes channels of one connection, each lane repeats queue.declare
// (durable, x-expires), basic.consume and basic.cancel, one queue per
// task. Like stalk's per-task reply queues, the queues are not deleted in
// the timed part: they would expire (x-expires cfg.ceilingExpires), and are
// deleted after the timed part, untimed. It returns queues/s.
func runCeiling(ctx context.Context, cfg *config, n int) (perS, cpuUs float64, err error) {
	return runCeilingWith(ctx, cfg, n, "ceil", nil)
}

// runCeilingWith is runCeiling with extra queue arguments (x-queue-type
// quorum, for the cluster's quorum ceiling); the queues are named
// <prefix>-<stem>-<i>.
func runCeilingWith(ctx context.Context, cfg *config, n int, stem string, extra amqp091.Table) (perS, cpuUs float64, err error) {
	conn, err := dial(cfg.url, cfg.prefix+" ceiling")
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	lanes := cfg.lanes
	if lanes > n {
		lanes = n
	}
	chans := make([]*amqp091.Channel, lanes)
	for i := range chans {
		if chans[i], err = conn.Channel(); err != nil {
			return 0, 0, err
		}
	}
	args := amqp091.Table{"x-expires": int32(cfg.ceilingExpires / time.Millisecond)}
	for k, v := range extra {
		args[k] = v
	}
	names := make([]string, n)
	var next atomic.Int64
	errc := make(chan error, lanes)
	var wg sync.WaitGroup
	cpu0 := processCPU()
	start := time.Now()
	for l := 0; l < lanes; l++ {
		wg.Add(1)
		go func(ch *amqp091.Channel) {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				q := cfg.prefix + "-" + stem + "-" + strconv.Itoa(i)
				names[i] = q
				if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
					errc <- fmt.Errorf("declare: %w", err)
					return
				}
				tag := "c" + strconv.Itoa(i)
				if _, err := ch.Consume(q, tag, true, false, false, false, nil); err != nil {
					errc <- fmt.Errorf("consume: %w", err)
					return
				}
				if err := ch.Cancel(tag, false); err != nil {
					errc <- fmt.Errorf("cancel: %w", err)
					return
				}
			}
		}(chans[l])
	}
	wg.Wait()
	el := time.Since(start)
	cpuUs = float64((processCPU() - cpu0).Microseconds()) / float64(n)
	// Untimed clean-up, so that the broker does not hold the queues until
	// they expire.
	deleteQueues(chans, names)
	select {
	case err := <-errc:
		return 0, 0, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	return float64(n) / el.Seconds(), cpuUs, nil
}

// deleteQueues deletes the named queues using the given channels, with
// no-wait so that the broker pipelines them; errors are ignored (the
// queues expire anyway).
func deleteQueues(chans []*amqp091.Channel, names []string) {
	var wg sync.WaitGroup
	per := (len(names) + len(chans) - 1) / len(chans)
	for l, ch := range chans {
		lo, hi := l*per, (l+1)*per
		if hi > len(names) {
			hi = len(names)
		}
		if lo >= hi {
			continue
		}
		wg.Add(1)
		go func(ch *amqp091.Channel, names []string) {
			defer wg.Done()
			for _, q := range names {
				if q != "" {
					if _, err := ch.QueueDelete(q, false, false, true); err != nil {
						return
					}
				}
			}
			// A synchronous call at the end waits for the no-wait deletes.
			_, _ = ch.QueueDelete(names[len(names)-1], false, false, false)
		}(ch, names[lo:hi])
	}
	wg.Wait()
}
