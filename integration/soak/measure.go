package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/stalk-dev/stalk/amqp"
)

// What the soak measures around a fault: the first result after it, the
// client's connection states, and latencies.

// watch records the results of the tasks sent since a fault began, so
// that the first result of a task sent after the fault took effect can be
// found once that moment is known.
type watch struct {
	since   time.Time
	mu      sync.Mutex
	done    []completion
	changed chan struct{}
}

type completion struct{ sent, at time.Time }

func (w *watch) add(sent, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.done) < 100000 {
		w.done = append(w.done, completion{sent, at})
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

func (s *soak) newWatch() *watch {
	w := &watch{since: time.Now(), changed: make(chan struct{})}
	s.watch.Store(w)
	return w
}

// firstResult waits for the result of a task sent at or after t0 and
// returns how long after t0 it came, or -1 if none came within limit
// (or none was sent after t0 before the sending stopped).
func (s *soak) firstResult(ctx context.Context, w *watch, t0 time.Time, limit time.Duration) time.Duration {
	timeout := time.After(limit)
	sendDone := s.sendDone
	for {
		w.mu.Lock()
		var first time.Time
		for _, c := range w.done {
			if !c.sent.Before(t0) && (first.IsZero() || c.at.Before(first)) {
				first = c.at
			}
		}
		ch := w.changed
		w.mu.Unlock()
		if !first.IsZero() {
			return first.Sub(t0)
		}
		select {
		case <-ch:
		case <-sendDone:
			if time.Unix(0, s.lastSent.Load()).Before(t0) {
				return -1
			}
			sendDone = nil
		case <-ctx.Done():
			return -1
		case <-timeout:
			return -1
		}
	}
}

// stateLog records the client's connection state changes, for timing
// recoveries.
type stateLog struct {
	mu      sync.Mutex
	ev      []stateEvent
	changed chan struct{}
}

type stateEvent struct {
	at         time.Time
	publishing bool
	state      amqp.ConnState
}

func newStateLog() *stateLog { return &stateLog{changed: make(chan struct{})} }

func (l *stateLog) add(publishing bool, st amqp.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ev = append(l.ev, stateEvent{time.Now(), publishing, st})
	if len(l.ev) > 4096 {
		l.ev = append(l.ev[:0:0], l.ev[2048:]...)
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// waitFor calls look with the events so far, and again after each new one,
// until it reports a time, ctx ends, or limit passes; on timeout, err says
// what did not happen.
func (l *stateLog) waitFor(ctx context.Context, limit time.Duration, look func([]stateEvent) (time.Time, bool), err func() error) (time.Time, error) {
	timeout := time.After(limit)
	for {
		l.mu.Lock()
		at, ok := look(l.ev)
		ch := l.changed
		l.mu.Unlock()
		if ok {
			return at, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-timeout:
			return time.Time{}, err()
		}
	}
}

// waitLeft waits for the connection to leave Ready at or after t0 and
// returns when it did.
func (l *stateLog) waitLeft(ctx context.Context, publishing bool, t0 time.Time, limit time.Duration) (time.Time, error) {
	return l.waitFor(ctx, limit, func(ev []stateEvent) (time.Time, bool) {
		for _, e := range ev {
			if e.publishing == publishing && !e.at.Before(t0) && e.state != amqp.Ready {
				return e.at, true
			}
		}
		return time.Time{}, false
	}, func() error { return fmt.Errorf("the connection did not drop within %s", limit) })
}

// waitReady waits for the connection to be Ready again after having left
// Ready at or after t0, and returns when it was.
func (l *stateLog) waitReady(ctx context.Context, publishing bool, t0 time.Time, limit time.Duration) (time.Time, error) {
	left := false
	return l.waitFor(ctx, limit, func(ev []stateEvent) (time.Time, bool) {
		left = false
		for _, e := range ev {
			if e.publishing != publishing || e.at.Before(t0) {
				continue
			}
			if e.state != amqp.Ready {
				left = true
			} else if left {
				return e.at, true
			}
		}
		return time.Time{}, false
	}, func() error {
		if !left {
			return fmt.Errorf("the connection did not drop within %s", limit)
		}
		return fmt.Errorf("not ready again within %s", limit)
	})
}

// latencyHist is a histogram of latencies in 0.1 ms buckets up to 10 s,
// plus a maximum, for the whole run's percentiles.
type latencyHist struct {
	buckets [100001]int64
	n       int64
	max     time.Duration
}

func (h *latencyHist) add(d time.Duration) {
	i := int(d / (100 * time.Microsecond))
	if i >= len(h.buckets) {
		i = len(h.buckets) - 1
	}
	h.buckets[i]++
	h.n++
	h.max = max(h.max, d)
}

func (h *latencyHist) pct(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	want := int64(p*float64(h.n-1)) + 1
	var seen int64
	for i, c := range h.buckets {
		seen += c
		if seen >= want {
			return time.Duration(i) * 100 * time.Microsecond
		}
	}
	return h.max
}

func pctOf(l []time.Duration, p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(p*float64(len(s)-1)+0.5)]
}
