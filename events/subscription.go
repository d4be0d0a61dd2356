package events

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Subscription is a handler attached to a Receiver. Events reach it
// through a bounded buffer, and its handler runs on a goroutine of its own,
// one event at a time, in arrival order: a slow handler never slows the
// delivery path or other subscriptions; it only loses events, which are
// counted (SubStats.Dropped) and logged.
type Subscription struct {
	r       *Receiver
	handler func(Event)
	cfg     subConfig
	log     zerolog.Logger

	mu       sync.Mutex
	ring     []Event
	head     int  // index of the oldest buffered event
	n        int  // number of buffered events
	stopping bool // no more events are accepted
	draining bool // the handler goroutine exits once the buffer is empty
	wake     chan struct{}
	done     chan struct{}

	matched   atomic.Uint64
	delivered atomic.Uint64
	dropped   atomic.Uint64
	discarded atomic.Uint64
	panics    atomic.Uint64

	lastDropLog  atomic.Int64 // unix nanos of the last drop log line
	droppedSince atomic.Uint64
}

// SubStats are a subscription's counters. Once the subscription is closed,
// Matched == Delivered + Dropped + Discarded.
type SubStats struct {
	Matched   uint64 // events that passed the subscription's filters
	Delivered uint64 // events handed to the handler
	Dropped   uint64 // events lost because the buffer was full
	Discarded uint64 // events still buffered when Stop was called
	Pending   int    // events in the buffer now
	Panics    uint64 // handler calls that panicked (recovered and logged)
}

func newSubscription(r *Receiver, handler func(Event), cfg subConfig) *Subscription {
	return &Subscription{
		r:       r,
		handler: handler,
		cfg:     cfg,
		log:     r.log.With().Str("component", "events-subscription").Logger(),
		ring:    make([]Event, cfg.buffer),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
}

// offer is called on the delivery path. It never blocks.
func (s *Subscription) offer(ev Event) {
	if !s.cfg.match(ev.EventHeader()) {
		return
	}
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	s.matched.Add(1)
	dropped := false
	if s.n == len(s.ring) {
		dropped = true
		if s.cfg.overflow == DropOldest {
			s.ring[s.head] = ev
			s.head = (s.head + 1) % len(s.ring)
		}
	} else {
		s.ring[(s.head+s.n)%len(s.ring)] = ev
		s.n++
	}
	s.mu.Unlock()
	if dropped {
		s.dropped.Add(1)
		s.r.dropped.Add(1)
		s.noteDrop()
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// noteDrop logs drops at most once a second, with the count since the
// last line.
func (s *Subscription) noteDrop() {
	s.droppedSince.Add(1)
	now := time.Now().UnixNano()
	last := s.lastDropLog.Load()
	if now-last < int64(time.Second) || !s.lastDropLog.CompareAndSwap(last, now) {
		return
	}
	n := s.droppedSince.Swap(0)
	s.log.Warn().Uint64("dropped", n).Uint64("dropped_total", s.dropped.Load()).
		Int("buffer", len(s.ring)).Str("overflow", s.cfg.overflow.String()).
		Msg("event subscription buffer full: handler too slow, events dropped")
}

func (s *Subscription) pop() (Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		return nil, false
	}
	ev := s.ring[s.head]
	s.ring[s.head] = nil
	s.head = (s.head + 1) % len(s.ring)
	s.n--
	return ev, true
}

func (s *Subscription) run(ctx context.Context) {
	defer close(s.done)
	defer s.r.remove(s)
	for {
		for {
			s.mu.Lock()
			stop := s.stopping && !s.draining
			s.mu.Unlock()
			if stop {
				s.discard()
				return
			}
			ev, ok := s.pop()
			if !ok {
				break
			}
			s.call(ev)
		}
		s.mu.Lock()
		finished := s.stopping && s.n == 0
		s.mu.Unlock()
		if finished {
			return
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			s.Stop()
		}
	}
}

func (s *Subscription) call(ev Event) {
	defer func() {
		if p := recover(); p != nil {
			s.panics.Add(1)
			h := ev.EventHeader()
			s.log.Error().Str("panic", fmt.Sprint(p)).Str("type", h.Type).Msg("event handler panicked; event skipped")
		}
	}()
	s.delivered.Add(1)
	s.handler(ev)
}

func (s *Subscription) discard() {
	s.mu.Lock()
	n := s.n
	for i := 0; i < s.n; i++ {
		s.ring[(s.head+i)%len(s.ring)] = nil
	}
	s.n = 0
	s.mu.Unlock()
	s.discarded.Add(uint64(n))
}

// Stop ends the subscription at once: no further events are accepted, the
// events still buffered are discarded (counted in Discarded), and the
// handler is not called again once the current call returns. Stop does
// not wait for that call; use Closed. It is idempotent and safe to call
// from the handler.
func (s *Subscription) Stop() {
	s.mu.Lock()
	s.stopping = true
	s.draining = false
	s.mu.Unlock()
	s.kick()
}

// Drain stops accepting events and waits until the handler has been called
// for every buffered event, or until ctx ends, in which case the rest are
// discarded as by Stop and ctx's error is returned. Do not call Drain from
// the handler: it would wait for itself.
func (s *Subscription) Drain(ctx context.Context) error {
	s.mu.Lock()
	if !s.stopping {
		s.stopping = true
		s.draining = true
	}
	s.mu.Unlock()
	s.kick()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		s.Stop()
		<-s.done
		return fmt.Errorf("events: drain: %w", ctx.Err())
	}
}

func (s *Subscription) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Closed is closed once the subscription has ended (Stop, Drain, the
// Subscribe context ending, or the Receiver closing) and its handler will
// not be called again.
func (s *Subscription) Closed() <-chan struct{} { return s.done }

// Stats returns the subscription's counters.
func (s *Subscription) Stats() SubStats {
	s.mu.Lock()
	pending := s.n
	s.mu.Unlock()
	return SubStats{
		Matched:   s.matched.Load(),
		Delivered: s.delivered.Load(),
		Dropped:   s.dropped.Load(),
		Discarded: s.discarded.Load(),
		Pending:   pending,
		Panics:    s.panics.Load(),
	}
}
