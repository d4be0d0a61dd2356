package amqp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/result"
)

// ErrReplyQueueDeleted is wrapped by the error that fails pending results
// whose reply queue was deleted while they waited.
var ErrReplyQueueDeleted = errors.New("stalk: reply queue was deleted")

// ErrForgotten fails a pending result that was forgotten.
var ErrForgotten = errors.New("stalk: result was forgotten")

// consumer is the result side: reply queues, the consumer loop and the
// registry of entries. It implements result.Backend (through Client).
type consumer struct {
	cfg  *config
	conn *broker.Conn
	log  zerolog.Logger
	reg  *registry
	in   chan inbound
	done chan struct{}
	wg   sync.WaitGroup
	gen  atomic.Uint64

	// Shared mode.
	sharedQueue string
	sharedCh    atomic.Pointer[amqp091.Channel]
	sharedTags  atomic.Uint64

	// Per-task mode.
	lanes   []*lane
	fmu     sync.Mutex
	follows map[string]*follow

	stats    counters
	nextLane atomic.Uint64
	tagSeq   atomic.Uint64 // numbers consumer tags

	// Shared mode acknowledges in batches: the last delivery not yet
	// acknowledged, and how many are covered by it. Loop goroutine only.
	ackLast    *amqp091.Delivery
	ackPending int
}

// ackBatch is the most deliveries one multiple-ack covers in shared mode.
const ackBatch = 64

type counters struct {
	received, malformed, orphans, duplicates, stale, evicted, deleted atomic.Int64
	reconnects                                                        atomic.Int64
}

type lane struct {
	idx  int
	mu   sync.Mutex
	ch   *amqp091.Channel
	conn *amqp091.Connection // the connection ch belongs to
	gen  uint64
}

// follow is one per-task reply queue consumer.
type follow struct {
	id        string
	entry     *result.Entry // the entry it was set up for
	queue     string
	tag       string
	lane      *lane
	gen       uint64
	cancelled bool        // by us (guarded by lane.mu)
	released  atomic.Bool // its entry was released: deliveries go back to the queue
}

type inbound struct {
	d         amqp091.Delivery
	f         *follow // nil in shared mode
	cancelTag string  // server-side basic.cancel for this consumer tag
	shared    bool    // the shared consumer was cancelled by the server
}

func newConsumer(cfg *config, log zerolog.Logger) *consumer {
	c := &consumer{
		cfg:     cfg,
		log:     log,
		reg:     newRegistry(cfg.cacheSize, cfg.cacheTTL),
		in:      make(chan inbound, 1024),
		done:    make(chan struct{}),
		follows: make(map[string]*follow),
	}
	if cfg.mode == Shared {
		c.sharedQueue = cfg.replyQueue
	} else {
		c.lanes = make([]*lane, cfg.lanes)
		for i := range c.lanes {
			c.lanes[i] = &lane{idx: i}
		}
	}
	return c
}

func (c *consumer) queueName(id string) string {
	if c.cfg.mode == Shared {
		return c.sharedQueue
	}
	return c.cfg.replyPrefix + id
}

func (c *consumer) queueArgs() amqp091.Table {
	ms := c.cfg.resultExpires.Milliseconds()
	if ms <= int64(^uint32(0)>>1) {
		return amqp091.Table{"x-expires": int32(ms)}
	}
	return amqp091.Table{"x-expires": ms}
}

// start runs the consumer loop. Call once, after conn is set.
func (c *consumer) start() {
	c.wg.Add(1)
	go c.loop()
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
	if c.cfg.mode == Shared {
		return c.consumeShared(conn, gen)
	}
	// Per-task: reopen every lane, then re-follow every pending result.
	for _, l := range c.lanes {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("stalk: open reply channel: %w", err)
		}
		if err := ch.Qos(c.cfg.prefetch, 0, false); err != nil {
			return fmt.Errorf("stalk: set prefetch: %w", err)
		}
		c.watchCancels(ch)
		l.mu.Lock()
		l.ch, l.conn, l.gen = ch, conn, gen
		l.mu.Unlock()
	}
	c.fmu.Lock()
	c.follows = make(map[string]*follow)
	c.fmu.Unlock()
	pending := c.reg.pendingEntries()
	if len(pending) == 0 {
		return nil
	}
	byLane := make([][]*result.Entry, len(c.lanes))
	for _, e := range pending {
		l := c.pickLane()
		byLane[l.idx] = append(byLane[l.idx], e)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(c.lanes))
	for i, es := range byLane {
		if len(es) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, e := range es {
				if err := c.followOn(c.lanes[i], e, gen); err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.log.Info().Int("pending", len(pending)).Msg("re-consumed reply queues")
	return nil
}

func (c *consumer) consumeShared(conn *amqp091.Connection, gen uint64) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("stalk: open reply channel: %w", err)
	}
	if err := ch.Qos(c.cfg.prefetch, 0, false); err != nil {
		return fmt.Errorf("stalk: set prefetch: %w", err)
	}
	cancels := ch.NotifyCancel(make(chan string, 1))
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for range cancels {
			select {
			case c.in <- inbound{shared: true}:
			case <-c.done:
				return
			}
		}
	}()
	c.sharedCh.Store(ch)
	return c.startShared(ch)
}

// startShared declares the shared reply queue and consumes it on ch.
func (c *consumer) startShared(ch *amqp091.Channel) error {
	if _, err := ch.QueueDeclare(c.sharedQueue, true, false, false, false, c.queueArgs()); err != nil {
		return fmt.Errorf("stalk: declare reply queue %q: %w", c.sharedQueue, err)
	}
	tag := fmt.Sprintf("stalk-shared-%d", c.sharedTags.Add(1))
	deliveries, err := ch.Consume(c.sharedQueue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("stalk: consume reply queue %q: %w", c.sharedQueue, err)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for d := range deliveries {
			select {
			case c.in <- inbound{d: d}:
			case <-c.done:
				return
			}
		}
	}()
	return nil
}

// watchCancels forwards server-side basic.cancel notifications of a lane
// channel (its queue was deleted) to the loop.
func (c *consumer) watchCancels(ch *amqp091.Channel) {
	cancels := ch.NotifyCancel(make(chan string, 16))
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for tag := range cancels {
			select {
			case c.in <- inbound{cancelTag: tag}:
			case <-c.done:
				return
			}
		}
	}()
}

// pickLane picks the lane for a new reply queue consumer: round-robin, so
// that declarations and consumers spread evenly over the lanes.
func (c *consumer) pickLane() *lane {
	n := c.nextLane.Add(1)
	return c.lanes[n%uint64(len(c.lanes))]
}

// follow makes sure the reply queue of e exists and is consumed. In shared
// mode there is nothing to do per task. It returns once the broker has
// confirmed the consumer, or ctx ends.
func (c *consumer) follow(ctx context.Context, e *result.Entry) error {
	if c.cfg.mode == Shared {
		return waitBroker(ctx, c.conn)
	}
	if err := broker.CheckShortString("per-task reply queue name", c.queueName(e.ID()), 0); err != nil {
		return fmt.Errorf("stalk: task %.40s…: %w", e.ID(), err)
	}
	if err := broker.CheckShortString("consumer tag", consumerTag(e.ID(), maxTagSeq), 0); err != nil {
		return fmt.Errorf("stalk: task %.40s…: %w", e.ID(), err)
	}
	l := c.pickLane()
	for {
		if err := waitBroker(ctx, c.conn); err != nil {
			return err
		}
		l.mu.Lock()
		gen := l.gen
		l.mu.Unlock()
		err := c.followOn(l, e, gen)
		if err == nil {
			return nil
		}
		var ae *amqp091.Error
		if errors.As(err, &ae) && (ae.Code == amqp091.PreconditionFailed || ae.Code == amqp091.AccessRefused || ae.Code == amqp091.NotAllowed) {
			// A queue declared with other arguments, a refused
			// permission: retrying will not help. The lane channel is
			// dead; a reconnect reopens it.
			c.conn.Reset(err)
			return fmt.Errorf("stalk: reply queue for task %s: %w", e.ID(), err)
		}
		// A channel that died under a live connection is reopened by a
		// reconnect; a dead connection is the supervisor's already.
		l.mu.Lock()
		dead := l.ch == nil || l.ch.IsClosed()
		sameGen := l.gen == gen
		l.mu.Unlock()
		if dead && sameGen && c.conn.State() == broker.Ready {
			c.conn.Reset(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if c.isFollowed(e) {
			return nil
		}
	}
}

// consumerTag is the tag of a consumer on id's per-task reply queue: unique
// per consumer, so that a new consumer for the same id never reuses the tag
// of one still being cancelled on the same channel.
func consumerTag(id string, seq uint64) string {
	return "stalk-" + strconv.FormatUint(seq, 10) + "-" + id
}

// maxTagSeq is the longest sequence number a consumer tag can carry.
const maxTagSeq = ^uint64(0)

// waitBroker waits until conn is Ready. Its error says what it was
// waiting for, and is ErrClosed once the client is closed.
func waitBroker(ctx context.Context, conn *broker.Conn) error {
	err := conn.WaitReady(ctx)
	if err == nil {
		return nil
	}
	if errors.Is(err, broker.ErrClosed) {
		return ErrClosed
	}
	if ctx.Err() != nil {
		if last := conn.LastError(); last != nil {
			return fmt.Errorf("waiting for the broker (%s, last error: %v): %w", conn.State(), last, err)
		}
		return fmt.Errorf("waiting for the broker (%s): %w", conn.State(), err)
	}
	return err
}

// closedErr maps the supervised connection's ErrClosed to the client's.
func closedErr(err error) error {
	if errors.Is(err, broker.ErrClosed) {
		return ErrClosed
	}
	return err
}

func (c *consumer) isFollowed(e *result.Entry) bool {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	f := c.follows[e.ID()]
	return f != nil && f.entry == e && f.gen == c.gen.Load()
}

// followOn declares and consumes e's queue on lane l, unless that was done
// on this connection already.
func (c *consumer) followOn(l *lane, e *result.Entry, gen uint64) error {
	id := e.ID()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gen != gen || l.ch == nil {
		return amqp091.ErrClosed
	}
	c.fmu.Lock()
	if f := c.follows[id]; f != nil && f.gen == gen && f.entry == e {
		c.fmu.Unlock()
		return nil
	}
	c.fmu.Unlock()
	if e.State().Ready() || !c.reg.isPending(id, e) {
		return nil // nothing to wait for, or released or forgotten meanwhile
	}
	q := c.queueName(id)
	declare := true
	if _, sent := e.SendInfo(); !sent {
		// Attaching to a task another client sent: its queue may exist
		// with another lifetime, and declaring it with ours would fail
		// (406) and take the lane's channel down. Look first, on a
		// throwaway channel.
		exists, err := queueExists(l.conn, q)
		if err != nil {
			return err
		}
		declare = !exists
	}
	if declare {
		// No-wait: the consume below is the round trip that tells whether
		// the channel survived the declaration (a failed declaration
		// closes the channel, and the consume then fails).
		if _, err := l.ch.QueueDeclare(q, true, false, false, true, c.queueArgs()); err != nil {
			return err
		}
	}
	f := &follow{id: id, entry: e, queue: q, tag: consumerTag(id, c.tagSeq.Add(1)), lane: l, gen: gen}
	deliveries, err := l.ch.Consume(q, f.tag, false, false, false, false, nil)
	if err != nil {
		return err
	}
	c.fmu.Lock()
	if !c.reg.isPending(id, e) {
		// Released, forgotten or settled while the consumer was being
		// set up; release looks for the follow only after dropping the
		// entry, so it is this side's to cancel.
		c.fmu.Unlock()
		f.released.Store(true)
		c.cancelLocked(f, false)
	} else {
		c.follows[id] = f
		c.fmu.Unlock()
	}
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
	return nil
}

// queueExists checks for q with a passive declare on a throwaway channel
// (a missing queue closes the channel it is asked on).
func queueExists(conn *amqp091.Connection, q string) (bool, error) {
	if conn == nil {
		return false, amqp091.ErrClosed
	}
	ch, err := conn.Channel()
	if err != nil {
		return false, err
	}
	defer ch.Close()
	if _, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil {
		var ae *amqp091.Error
		if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// cancelLocked cancels f's consumer on its lane's channel; the caller holds
// f.lane.mu. Unless noWait, it waits for cancel-ok, so that what the broker
// delivered before it reaches the loop (which requeues a final state)
// instead of being dropped unacknowledged by amqp091-go.
func (c *consumer) cancelLocked(f *follow, noWait bool) {
	f.cancelled = true
	if err := f.lane.ch.Cancel(f.tag, noWait); err != nil {
		c.log.Debug().Err(err).Str("task_id", f.id).Msg("cancel reply consumer")
	}
}

// unfollow cancels f's consumer (once) and then requeues d, if given, so
// that the final state stays in the queue for other readers.
func (c *consumer) unfollow(f *follow, d *amqp091.Delivery) {
	l := f.lane
	l.mu.Lock()
	if !f.cancelled && l.gen == f.gen && l.ch != nil {
		// With a final state to requeue, no-wait: the requeue below is sent
		// after the cancel on the same channel, so the broker has stopped
		// this consumer by then. Without one (Release, Forget), wait.
		c.cancelLocked(f, d != nil)
	}
	l.mu.Unlock()
	c.fmu.Lock()
	if c.follows[f.id] == f {
		delete(c.follows, f.id)
	}
	c.fmu.Unlock()
	if d != nil {
		_ = d.Nack(false, true)
	}
}

func (c *consumer) loop() {
	defer c.wg.Done()
	for {
		select {
		case m := <-c.in:
			c.handle(m)
			if len(c.in) == 0 {
				c.flushAcks()
			}
		case <-c.done:
			return
		}
	}
}

// ack acknowledges a handled delivery. In shared mode acks are batched with
// multiple=true (every delivery on the shared channel is acknowledged once
// handled, so a multiple-ack never covers one that must stay); per-task
// lanes hold final states unacknowledged, so they ack one by one.
func (c *consumer) ack(d *amqp091.Delivery, shared bool) {
	if !shared {
		_ = d.Ack(false)
		return
	}
	if c.ackLast != nil && c.ackLast.Acknowledger != d.Acknowledger {
		c.flushAcks() // the channel changed (a reconnect)
	}
	c.ackLast = d
	c.ackPending++
	if c.ackPending >= ackBatch {
		c.flushAcks()
	}
}

func (c *consumer) flushAcks() {
	if c.ackLast == nil {
		return
	}
	_ = c.ackLast.Ack(c.ackPending > 1)
	c.ackLast, c.ackPending = nil, 0
}

func (c *consumer) handle(m inbound) {
	switch {
	case m.shared:
		c.sharedQueueDeleted()
		return
	case m.cancelTag != "":
		c.perTaskQueueDeleted(m.cancelTag)
		return
	}
	d := m.d
	if m.f != nil && m.f.released.Load() {
		// Delivered between a Release and the cancel-ok of its consumer:
		// the state stays in the task's queue, for later readers.
		_ = d.Nack(false, true)
		return
	}
	c.stats.received.Add(1)
	meta, err := result.DecodeMessage(d.ContentType, d.ContentEncoding, d.Body, result.DecodeOptions{MaxBodySize: c.cfg.maxBody})
	if err != nil {
		c.stats.malformed.Add(1)
		id := d.CorrelationId
		var de *result.DecodeError
		if errors.As(err, &de) && de.TaskID != "" {
			id = de.TaskID
		}
		c.log.Warn().Err(err).Str("task_id", id).Str("queue", d.RoutingKey).Int("bytes", len(d.Body)).Msg("dropping malformed result message")
		c.ack(&d, m.f == nil)
		return
	}
	meta.CorrelationID = d.CorrelationId
	meta.Received = time.Now()
	e, known, evicted := c.reg.route(meta.TaskID)
	c.noteEvicted(evicted)
	if !known {
		c.stats.orphans.Add(1)
		c.log.Debug().Str("task_id", meta.TaskID).Str("status", string(meta.Status)).Msg("result for a task nobody is waiting on; kept in the cache")
	}
	settled := func() { c.noteEvicted(c.reg.settled(meta.TaskID, e, meta)) }
	switch e.DeliverWith(meta, settled) {
	case result.Settled:
	case result.Duplicate:
		c.stats.duplicates.Add(1)
		c.log.Debug().Str("task_id", meta.TaskID).Str("status", string(meta.Status)).Msg("duplicate final state ignored")
	case result.Stale:
		c.stats.stale.Add(1)
		c.log.Debug().Str("task_id", meta.TaskID).Str("status", string(meta.Status)).Msg("late state after the final one ignored")
	}
	if m.f != nil && meta.Status.Ready() && meta.TaskID == m.f.id {
		// Keep the final state in the queue for other readers: stop our
		// consumer first, then requeue. Off the loop: these are RPCs.
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.unfollow(m.f, &d)
		}()
		return
	}
	c.ack(&d, m.f == nil)
}

func (c *consumer) noteEvicted(n int) {
	if n > 0 {
		total := c.stats.evicted.Add(int64(n))
		if total == int64(n) || total%1000 < int64(n) {
			c.log.Warn().Int64("evicted_total", total).Int("cache_size", c.cfg.cacheSize).Msg("result cache full or expired: evicting results nobody asked for")
		}
	}
}

func (c *consumer) sharedQueueDeleted() {
	c.stats.deleted.Add(1)
	err := fmt.Errorf("%w: %q was deleted while results were pending; they may be lost", ErrReplyQueueDeleted, c.sharedQueue)
	c.log.Error().Str("queue", c.sharedQueue).Msg("shared reply queue deleted; failing pending results and redeclaring it")
	// Redeclare and re-consume first, so that tasks sent from now on have
	// a queue to be answered on; a reconnect does it if the channel died.
	c.flushAcks()
	if ch := c.sharedCh.Load(); ch == nil || c.startShared(ch) != nil {
		c.conn.Reset(err)
	}
	for _, e := range c.reg.pendingEntries() {
		if e.Fail(err) {
			c.reg.drop(e.ID())
		}
	}
}

func (c *consumer) perTaskQueueDeleted(tag string) {
	c.fmu.Lock()
	var f *follow
	for _, x := range c.follows {
		if x.tag == tag {
			f = x
			break
		}
	}
	if f != nil {
		delete(c.follows, f.id)
	}
	c.fmu.Unlock()
	if f == nil {
		return
	}
	c.stats.deleted.Add(1)
	err := fmt.Errorf("%w: %q (task %s)", ErrReplyQueueDeleted, f.queue, f.id)
	c.log.Error().Str("queue", f.queue).Str("task_id", f.id).Msg("reply queue deleted while its result was pending")
	if e := c.reg.lookup(f.id); e != nil && e.Fail(err) {
		c.reg.drop(f.id)
	}
}

// exists reports whether a result for id is known here or stored in its
// per-task queue.
func (c *consumer) exists(ctx context.Context, id string) (bool, error) {
	if e := c.reg.lookup(id); e != nil && e.Latest() != nil {
		return true, nil
	}
	if c.cfg.mode == Shared {
		return false, nil
	}
	ch, err := c.conn.Channel(ctx)
	if err != nil {
		return false, closedErr(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(c.queueName(id), true, false, false, false, c.queueArgs())
	if err != nil {
		var ae *amqp091.Error
		if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
			return false, nil
		}
		return false, fmt.Errorf("stalk: check reply queue of task %s: %w", id, err)
	}
	return q.Messages > 0, nil
}

// followOf returns the current follow of id, or nil.
func (c *consumer) followOf(id string) *follow {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	return c.follows[id]
}

// release stops following id: its pending waits fail with ErrReleased,
// and in per-task mode its consumer is cancelled. Its reply queue and
// whatever is stored in it stay.
func (c *consumer) release(id string) {
	e := c.reg.release(id)
	if e == nil {
		return
	}
	e.Fail(fmt.Errorf("%w: task %s", result.ErrReleased, id))
	if c.cfg.mode == Shared {
		return
	}
	f := c.followOf(id)
	if f != nil && f.entry == e {
		// Another AsyncResult may have attached to id again meanwhile,
		// with a follow of its own: that one stays.
		f.released.Store(true)
		c.unfollow(f, nil)
	}
}

// forget drops id locally and deletes its per-task queue.
func (c *consumer) forget(ctx context.Context, id string) error {
	if e := c.reg.drop(id); e != nil {
		e.Fail(fmt.Errorf("%w: task %s", ErrForgotten, id))
	}
	if c.cfg.mode == Shared {
		return nil
	}
	f := c.followOf(id)
	if f != nil {
		c.unfollow(f, nil)
	}
	ch, err := c.conn.Channel(ctx)
	if err != nil {
		return closedErr(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(c.queueName(id), false, false, false); err != nil {
		var ae *amqp091.Error
		if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
			return nil
		}
		return fmt.Errorf("stalk: delete reply queue of task %s: %w", id, err)
	}
	return nil
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

func (c *consumer) channels() int {
	if c.cfg.mode == Shared {
		return 1
	}
	return len(c.lanes)
}
