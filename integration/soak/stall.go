package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// stallAfter is how long a task may wait for its result before the stall
// probe looks at it: far beyond the run's p99.
const stallAfter = 4 * time.Second

// maxStallReports bounds how many stalled tasks a run describes.
const maxStallReports = 20

// stallProbe looks, every second, for tasks waiting longer than stallAfter
// and says, once per task, where the broker has their reply queue and its
// result: ready in the queue (the broker holds it and does not deliver
// it), unacknowledged (delivered to the client, which did not settle it),
// or neither (it never reached the queue), with the queue's consumers.
func (s *soak) stallProbe(ctx context.Context) {
	seen := map[int64]bool{}
	reported := 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for reported < maxStallReports {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var stalled []*task
		s.mu.Lock()
		for seq, t := range s.outstanding {
			if !seen[seq] && time.Since(t.sent) > stallAfter && t.r != nil {
				stalled = append(stalled, t)
			}
		}
		s.mu.Unlock()
		if len(stalled) == 0 {
			continue
		}
		sort.Slice(stalled, func(i, j int) bool { return stalled[i].seq < stalled[j].seq })
		if len(stalled) > 5 {
			stalled = stalled[:5]
		}
		for _, t := range stalled {
			if ctx.Err() != nil {
				return
			}
			seen[t.seq] = true
			if d, telling := s.describeStall(ctx, t); telling {
				reported++
				s.logf("stall: %s", d)
			}
		}
	}
}

// describeStall describes t, and says whether that tells something: a
// result that sits in a reachable reply queue, or a task sent after every
// fault so far was over whose result is nowhere. A task whose reply
// queue's node is down, or was while it ran, is the known loss.
func (s *soak) describeStall(ctx context.Context, t *task) (string, bool) {
	// Bounded by the run: a broker node that does not answer must not hold
	// the end of the run up.
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b := &strings.Builder{}
	fmt.Fprintf(b, "task %d %s sent at %s, waiting %.1fs, state %s", t.seq, t.r.ID(), fmtDur(t.sent.Sub(s.start)), time.Since(t.sent).Seconds(), t.r.State())
	s.mu.Lock()
	nf := len(s.faults)
	var f faultRecord
	afterFaults := true
	for _, x := range s.faults {
		if over := x.At + s.cfg.down.Seconds() + x.Restart + 1; t.sent.Sub(s.start).Seconds() < over {
			afterFaults = false
		}
	}
	if nf > 0 {
		f = s.faults[nf-1]
	}
	s.mu.Unlock()
	telling := false
	if nf > 0 {
		fmt.Fprintf(b, "; last fault %q node %d at %s", f.Kind, f.Node, fmtDur(time.Duration(f.At*float64(time.Second))))
	}
	q := s.client.ReplyQueue(t.r.ID())
	if q == "" {
		q = s.taskQueue
	}
	out, err := s.env.ctl(qctx, "-s", "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers", "pid")
	if err != nil {
		fmt.Fprintf(b, "; list_queues: %v", err)
	} else {
		found := false
		for _, line := range strings.Split(out, "\n") {
			f := strings.Split(strings.TrimSpace(line), "\t")
			if len(f) == 5 && f[0] == q {
				fmt.Fprintf(b, "; broker: %s ready, %s unacknowledged, %s consumers, pid %s", f[1], f[2], f[3], f[4])
				found = true
				switch {
				case f[1] == "" || f[2] == "":
					// its node is down
				case f[1] != "0" || f[2] != "0":
					telling = true
				default:
					telling = afterFaults
				}
			}
			if len(f) == 5 && f[0] == s.taskQueue {
				fmt.Fprintf(b, "; task queue: %s ready, %s unacknowledged, %s consumers", f[1], f[2], f[3])
			}
		}
		if !found {
			fmt.Fprintf(b, "; broker: no queue %s", q)
		}
	}
	out, err = s.env.ctl(qctx, "-s", "list_consumers", "queue_name", "channel_pid", "consumer_tag")
	if err == nil {
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Split(strings.TrimSpace(line), "\t"); len(f) == 3 && f[0] == q {
				fmt.Fprintf(b, "; consumer %s on channel %s", f[2], f[1])
			}
		}
	}
	res, pub := s.client.Status()
	fmt.Fprintf(b, "; client results %+v, publishing %+v", res, pub)
	return b.String(), telling
}
