package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/result"
)

// replyMode is how results come back: the shared reply queue or a queue
// per task. The consumer loop is the same for both; a mode owns its queues,
// its channels and its acknowledgement policy.
type replyMode interface {
	// queueFor is the reply_to of task id.
	queueFor(id string) string
	// setup declares and consumes what the mode needs on a new results
	// connection, re-consuming for every pending entry, before the client
	// reports Ready.
	setup(conn *amqp091.Connection, gen uint64) error
	// follow makes sure e's results reach the loop; it returns once they
	// will, or ctx ends.
	follow(ctx context.Context, e *result.Entry) error
	// release stops following id, whose entry e was just dropped.
	release(id string, e *result.Entry)
	// forget deletes what the broker stores for id.
	forget(ctx context.Context, id string) error
	// exists reports whether the broker stores a result for id.
	exists(ctx context.Context, id string) (bool, error)
	// take reports whether the loop should handle m; a mode may dispose of
	// it itself (a delivery to a released consumer).
	take(m inbound) bool
	// done settles m's delivery once the loop has handled it; meta is nil
	// for a malformed message.
	done(m inbound, meta *result.Meta)
	// idle is called when the loop has nothing queued; it reports whether
	// the mode has work to flush later (batched acknowledgements), for
	// which the loop calls flush after ackDelay unless more comes first.
	idle() bool
	// flush does that work now.
	flush()
	// channels is the number of AMQP channels the mode keeps open.
	channels() int
}

// inbound is one thing for the loop: a delivery, or an event of a mode
// (a server-side cancel) to run on the loop.
type inbound struct {
	d     amqp091.Delivery
	f     *follow // the per-task consumer it came from; nil in shared mode
	event func()
}

// consumer is the result side: the registry of entries, the reply mode,
// and the one loop that decodes every result message, records it and
// settles its promise. It never runs user code.
type consumer struct {
	cfg  *config
	conn *broker.Conn
	log  zerolog.Logger
	reg  *registry
	mode replyMode
	in   chan inbound
	done chan struct{}
	wg   sync.WaitGroup
	gen  atomic.Uint64

	stats counters
	tel   *telemetry
	// multiNode: the client has several broker URLs (a cluster), so a
	// classic reply queue may be on a node that is down.
	multiNode bool
}

type counters struct {
	received, malformed, orphans, duplicates, stale, deleted atomic.Int64
	evicted, evictedUnread, reconnects, delayedFallback      atomic.Int64
	unreachable                                              atomic.Int64
}

func newConsumer(cfg *config, log zerolog.Logger) *consumer {
	c := &consumer{
		cfg:  cfg,
		log:  log,
		reg:  newRegistry(cfg.cacheSize, cfg.cacheTTL),
		in:   make(chan inbound, 1024),
		done: make(chan struct{}),
	}
	if cfg.mode == Shared {
		c.mode = newSharedReplies(c, cfg.replyQueue)
	} else {
		c.mode = newPerTaskReplies(c)
	}
	return c
}

// queueArgs are the reply queues' arguments.
func (c *consumer) queueArgs() amqp091.Table {
	args := amqp091.Table{"x-expires": int32(c.cfg.resultExpires.Milliseconds())}
	if c.cfg.replyType == Quorum {
		args["x-queue-type"] = string(Quorum)
	}
	return args
}

// start runs the consumer loop. Call once, after conn is set.
func (c *consumer) start() {
	c.wg.Add(1)
	go c.loop()
}

// forward hands deliveries to the loop until they end or the client closes.
func (c *consumer) forward(deliveries <-chan amqp091.Delivery, f *follow) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for d := range deliveries {
			select {
			case c.in <- inbound{d: d, f: f}:
			case <-c.done:
				return
			}
		}
	}()
}

// post runs fn on the loop.
func (c *consumer) post(fn func()) {
	select {
	case c.in <- inbound{event: fn}:
	case <-c.done:
	}
}

// markDisrupted records on every pending entry that the connection carrying
// its result was lost, so that a wait that ends without the result says it
// may have been lost.
func (c *consumer) markDisrupted() {
	for _, e := range c.reg.pendingEntries() {
		e.MarkDisrupted()
	}
}

// hook runs on every new results connection, before the client is Ready.
func (c *consumer) hook(ctx context.Context, conn *amqp091.Connection) error {
	gen := c.gen.Add(1)
	if gen > 1 {
		c.stats.reconnects.Add(1)
		// Entries attached while the connection was down, too.
		c.markDisrupted()
	}
	return c.mode.setup(conn, gen)
}

// ackDelay is how long the loop holds batched acknowledgements once it has
// nothing to do: a result a second costs one ack frame per 64 or per
// ackDelay, not one per result. Unacknowledged deliveries stay bounded by
// the prefetch, and a reconnect redelivers them (counted as duplicates).
const ackDelay = 20 * time.Millisecond

func (c *consumer) loop() {
	defer c.wg.Done()
	flush := time.NewTimer(ackDelay)
	flush.Stop()
	armed := false
	for {
		select {
		case m := <-c.in:
			c.handle(m)
			if len(c.in) == 0 && c.mode.idle() && !armed {
				flush.Reset(ackDelay)
				armed = true
			}
		case <-flush.C:
			armed = false
			c.mode.flush()
		case <-c.done:
			flush.Stop()
			c.mode.flush()
			return
		}
	}
}

func (c *consumer) handle(m inbound) {
	if m.event != nil {
		m.event()
		return
	}
	if !c.mode.take(m) {
		return
	}
	d := &m.d
	c.stats.received.Add(1)
	meta, err := result.DecodeMessage(d.ContentType, d.ContentEncoding, d.Body, result.DecodeOptions{MaxBodySize: c.cfg.maxBody})
	if err != nil {
		id := d.CorrelationId
		var de *result.DecodeError
		if errors.As(err, &de) && de.TaskID != "" {
			id = de.TaskID
		}
		// Logged, then counted: a count that is seen has been logged.
		c.log.Warn().Err(err).Str("task_id", id).Str("queue", d.RoutingKey).Int("bytes", len(d.Body)).Msg("dropping malformed result message")
		c.stats.malformed.Add(1)
		c.mode.done(m, nil)
		return
	}
	meta.CorrelationID = d.CorrelationId
	meta.Received = time.Now()
	c.deliver(meta)
	c.mode.done(m, meta)
}

// deliver records a decoded result message on its entry (a new orphan in
// the cache when nobody asked for its id) and settles the entry's promise
// on a final state.
func (c *consumer) deliver(meta *result.Meta) {
	e, known, ev := c.reg.route(meta.TaskID)
	c.noteEvicted(ev)
	if !known {
		c.log.Debug().Str("task_id", meta.TaskID).Str("status", string(meta.Status)).Msg("result for a task nobody is waiting on; kept in the cache")
		c.stats.orphans.Add(1)
	}
	switch e.DeliverWith(meta, func() { c.noteEvicted(c.reg.settled(meta.TaskID, e, meta)) }) {
	case result.Settled:
		if c.tel != nil {
			c.tel.finished(e, meta)
		}
	case result.Duplicate:
		c.log.Debug().Str("task_id", meta.TaskID).Str("status", string(meta.Status)).Msg("duplicate final state ignored")
		c.stats.duplicates.Add(1)
	case result.Stale:
		c.log.Debug().Str("task_id", meta.TaskID).Str("status", string(meta.Status)).Msg("late state after the final one ignored")
		c.stats.stale.Add(1)
	}
}

// noteEvicted counts cache evictions. Results somebody asked for are
// routine to evict; results nobody ever asked for are worth a warning (the
// first, then one per thousand).
func (c *consumer) noteEvicted(ev evictions) {
	if ev.total() == 0 {
		return
	}
	c.stats.evicted.Add(int64(ev.total()))
	if ev.unclaimed == 0 {
		return
	}
	n := int64(ev.unclaimed)
	total := c.stats.evictedUnread.Add(n)
	if total == n || total%1000 < n {
		c.log.Warn().Int64("evicted_unread_total", total).Int("cache_size", c.cfg.cacheSize).
			Msg("result cache full or expired: evicting results for ids nobody asked for")
	}
}

// failPending fails every pending entry with err and drops it.
func (c *consumer) failPending(err error) {
	for _, e := range c.reg.pendingEntries() {
		if e.Fail(err) {
			c.reg.drop(e.ID())
		}
	}
}

// release stops following id: its pending waits fail with ErrReleased.
// Its reply queue and whatever is stored in it stay.
func (c *consumer) release(id string) {
	e := c.reg.release(id)
	if e == nil {
		return
	}
	e.Fail(fmt.Errorf("%w: task %s", result.ErrReleased, id))
	c.mode.release(id, e)
}

// forget drops id locally and deletes what the broker stores for it.
func (c *consumer) forget(ctx context.Context, id string) error {
	if e := c.reg.drop(id); e != nil {
		e.Fail(fmt.Errorf("%w: task %s", ErrForgotten, id))
	}
	return c.mode.forget(ctx, id)
}

// exists reports whether a result for id is known here or stored.
func (c *consumer) exists(ctx context.Context, id string) (bool, error) {
	if e := c.reg.lookup(id); e != nil && e.Latest() != nil {
		return true, nil
	}
	return c.mode.exists(ctx, id)
}

// closeAll rejects every pending result with ErrClosed and stops the loop.
// The connection must already be closed.
func (c *consumer) closeAll() {
	for _, e := range c.reg.pendingEntries() {
		e.Fail(result.ErrClosed)
	}
	close(c.done)
	c.wg.Wait()
}

// waitBroker waits until conn is Ready. Its error says what it was
// waiting for, and is ErrClosed once the client is closed.
func waitBroker(ctx context.Context, conn *broker.Conn) error {
	if err := conn.WaitReady(ctx); err != nil {
		return broker.WaitErr(ctx, conn, err)
	}
	return nil
}
