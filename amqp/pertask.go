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

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
	"github.com/stalk-dev/stalk/result"
)

// perTaskReplies is the per-task reply mode: every task has its own
// durable reply queue, named from its id, with x-expires. The consumers
// are spread over a fixed number of lane channels. The final state stays
// in the queue for other readers: a consumer that reads it is cancelled,
// and the message is put back.
type perTaskReplies struct {
	c      *consumer
	prefix string
	lanes  []*lane
	next   atomic.Uint64
	tagSeq atomic.Uint64 // numbers consumer tags

	fmu     sync.Mutex
	follows map[string]*follow
	// down holds the entries whose queue's home node is down (a classic
	// queue on a cluster node that died), until it is back.
	down      map[string]downEntry
	watchOnce sync.Once
}

type lane struct {
	idx   int
	mu    sync.Mutex
	ch    *amqp091.Channel
	conn  *amqp091.Connection // the connection ch belongs to
	gen   uint64              // the connection's generation
	chGen uint64              // bumped whenever ch is replaced on the same connection
}

// follow is one per-task reply queue consumer.
type follow struct {
	id        string
	entry     *result.Entry // the entry it was set up for
	queue     string
	tag       string
	lane      *lane
	gen       uint64
	chGen     uint64      // the lane channel it consumes on
	cancelled bool        // by us (guarded by lane.mu)
	released  atomic.Bool // its entry was released: deliveries go back to the queue
}

func newPerTaskReplies(c *consumer) *perTaskReplies {
	p := &perTaskReplies{c: c, prefix: c.cfg.replyPrefix, follows: make(map[string]*follow), down: make(map[string]downEntry)}
	p.lanes = make([]*lane, c.cfg.lanes)
	for i := range p.lanes {
		p.lanes[i] = &lane{idx: i}
	}
	return p
}

func (p *perTaskReplies) queueFor(id string) string { return p.prefix + id }
func (p *perTaskReplies) channels() int             { return len(p.lanes) }
func (p *perTaskReplies) idle() bool                { return false }
func (p *perTaskReplies) flush()                    {}

// setup reopens every lane, then re-follows every pending result.
func (p *perTaskReplies) setup(conn *amqp091.Connection, gen uint64) error {
	for _, l := range p.lanes {
		l.mu.Lock()
		err := p.openLaneLocked(l, conn, gen)
		l.mu.Unlock()
		if err != nil {
			return err
		}
	}
	p.fmu.Lock()
	p.follows = make(map[string]*follow)
	p.fmu.Unlock()
	pending := p.c.reg.pendingEntries()
	if len(pending) == 0 {
		return nil
	}
	byLane := make([][]*result.Entry, len(p.lanes))
	for _, e := range pending {
		l := p.pickLane()
		byLane[l.idx] = append(byLane[l.idx], e)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(p.lanes))
	for i, es := range byLane {
		if len(es) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for len(es) > 0 {
				e := es[0]
				es = es[1:]
				// On a cluster, a queue from before the reconnect may live
				// on a node that is down: look before declaring it, so that
				// a 404 does not take the lane's channel down.
				err := p.followOn(p.lanes[i], e, gen, p.c.multiNode)
				if errors.Is(err, errLaneReset) {
					// The lane's channel died under its other consumers:
					// follow them again on the new one.
					es = append(es, p.staleFollows(p.lanes[i])...)
					continue
				}
				if err != nil {
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
	p.c.log.Info().Int("pending", len(pending)).Msg("re-consumed reply queues")
	if p.c.multiNode && gen > 1 {
		p.recheckLater(gen)
	}
	return nil
}

// errLaneReset: a follow took a lane's channel down (its queue's home node
// is down, which a passive declare does not always tell), and the lane has
// a new channel; the lane's other follows need to be set up again on it.
var errLaneReset = errors.New("reply lane channel replaced")

// openLaneLocked opens l's channel on conn; the caller holds l.mu.
func (p *perTaskReplies) openLaneLocked(l *lane, conn *amqp091.Connection, gen uint64) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("stalk: open reply channel: %w", err)
	}
	if err := ch.Qos(p.c.cfg.prefetch, 0, false); err != nil {
		return fmt.Errorf("stalk: set prefetch: %w", err)
	}
	p.watchCancels(ch)
	l.ch, l.conn, l.gen = ch, conn, gen
	l.chGen++
	p.watchLaneClose(l, ch)
	return nil
}

// laneCloseGrace is how long watchLaneClose waits before it looks at a
// lane whose channel the broker closed.
const laneCloseGrace = 100 * time.Millisecond

// watchLaneClose reopens l when the broker closes its channel while the
// connection stays up (a channel-level error: every consumer on the lane is
// gone with it, and no reconnect would follow them again), and follows the
// lane's results again on the new channel. A channel replaced or closed by
// stalk, or one whose connection died, is left to whoever did that.
func (p *perTaskReplies) watchLaneClose(l *lane, ch *amqp091.Channel) {
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	p.c.wg.Add(1)
	go func() {
		defer p.c.wg.Done()
		var err *amqp091.Error
		select {
		case <-p.c.done:
			return
		case err = <-closed:
		}
		if err == nil {
			return // closed by us
		}
		// A follow that took the channel down with it replaces the lane
		// itself, and a connection going down closes its channels too:
		// give both a moment, and act only on a lane still left broken
		// under a connection that is up and Ready.
		select {
		case <-p.c.done:
			return
		case <-time.After(laneCloseGrace):
		}
		l.mu.Lock()
		if l.ch != ch || l.conn == nil || l.conn.IsClosed() || p.c.conn.State() != broker.Ready {
			l.mu.Unlock()
			return
		}
		p.c.log.Warn().Str("error", err.Error()).Int("lane", l.idx).Msg("reply channel closed by the broker; reopening it and following its results again")
		oerr := p.openLaneLocked(l, l.conn, l.gen)
		l.mu.Unlock()
		if oerr != nil {
			p.c.conn.Reset(oerr)
			return
		}
		p.refollowLane(l)
	}()
}

// staleFollows drops the follows on l that consumed on a channel it has
// replaced, and returns their entries, to follow again.
func (p *perTaskReplies) staleFollows(l *lane) []*result.Entry {
	l.mu.Lock()
	chGen := l.chGen
	l.mu.Unlock()
	p.fmu.Lock()
	defer p.fmu.Unlock()
	var out []*result.Entry
	for id, f := range p.follows {
		if f.lane == l && f.chGen != chGen {
			delete(p.follows, id)
			out = append(out, f.entry)
		}
	}
	return out
}

// refollowLane follows again, in the background, what l's replaced
// channel was consuming.
func (p *perTaskReplies) refollowLane(l *lane) {
	p.c.wg.Add(1)
	go func() {
		defer p.c.wg.Done()
		es := p.staleFollows(l)
		for len(es) > 0 {
			e := es[0]
			es = es[1:]
			l.mu.Lock()
			gen := l.gen
			l.mu.Unlock()
			err := p.followOn(l, e, gen, true)
			if errors.Is(err, errLaneReset) {
				es = append(es, p.staleFollows(l)...)
			} else if err != nil {
				p.c.log.Debug().Err(err).Str("task_id", e.ID()).Msg("follow again on a new lane channel; a reconnect does it otherwise")
			}
		}
	}()
}

// watchCancels forwards server-side basic.cancel notifications of a lane
// channel (its queue was deleted) to the loop.
func (p *perTaskReplies) watchCancels(ch *amqp091.Channel) {
	cancels := ch.NotifyCancel(make(chan string, 16))
	p.c.wg.Add(1)
	go func() {
		defer p.c.wg.Done()
		for tag := range cancels {
			p.c.post(func() { p.deleted(tag) })
		}
	}()
}

// pickLane picks the lane for a new reply queue consumer: round-robin, so
// that declarations and consumers spread evenly over the lanes.
func (p *perTaskReplies) pickLane() *lane {
	n := p.next.Add(1)
	return p.lanes[n%uint64(len(p.lanes))]
}

// consumerTag is the tag of a consumer on id's per-task reply queue: unique
// per consumer, so that a new consumer for the same id never reuses the tag
// of one still being cancelled on the same channel.
func consumerTag(id string, seq uint64) string {
	return "stalk-" + strconv.FormatUint(seq, 10) + "-" + id
}

// maxTagSeq is the longest sequence number a consumer tag can carry.
const maxTagSeq = ^uint64(0)

// follow makes sure the reply queue of e exists and is consumed. It
// returns once the broker has confirmed the consumer, or ctx ends.
func (p *perTaskReplies) follow(ctx context.Context, e *result.Entry) error {
	if err := celery.CheckShortString("per-task reply queue name", p.queueFor(e.ID()), 0); err != nil {
		return fmt.Errorf("stalk: task %.40s…: %w", e.ID(), err)
	}
	if err := celery.CheckShortString("consumer tag", consumerTag(e.ID(), maxTagSeq), 0); err != nil {
		return fmt.Errorf("stalk: task %.40s…: %w", e.ID(), err)
	}
	l := p.pickLane()
	for {
		if err := waitBroker(ctx, p.c.conn); err != nil {
			return err
		}
		l.mu.Lock()
		gen := l.gen
		l.mu.Unlock()
		err := p.followOn(l, e, gen, false)
		if errors.Is(err, errLaneReset) {
			p.refollowLane(l)
			return nil // e is marked down and watched
		}
		if err == nil {
			return nil
		}
		var ae *amqp091.Error
		if errors.As(err, &ae) && (ae.Code == amqp091.PreconditionFailed || ae.Code == amqp091.AccessRefused || ae.Code == amqp091.NotAllowed) {
			// A queue declared with other arguments, a refused
			// permission: retrying will not help. The lane channel is
			// dead; a reconnect reopens it.
			p.c.conn.Reset(err)
			return fmt.Errorf("stalk: reply queue for task %s: %w", e.ID(), err)
		}
		// A channel that died under a live connection is reopened by a
		// reconnect; a dead connection is the supervisor's already, and
		// resetting it again would only add noise.
		l.mu.Lock()
		dead := l.ch == nil || l.ch.IsClosed()
		connUp := l.conn != nil && !l.conn.IsClosed()
		sameGen := l.gen == gen
		l.mu.Unlock()
		if dead && connUp && sameGen && p.c.conn.State() == broker.Ready {
			p.c.conn.Reset(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if p.isFollowed(e) {
			return nil
		}
	}
}

func (p *perTaskReplies) isFollowed(e *result.Entry) bool {
	p.fmu.Lock()
	defer p.fmu.Unlock()
	f := p.follows[e.ID()]
	return f != nil && f.entry == e && f.gen == p.c.gen.Load()
}

// followOn declares and consumes e's queue on lane l, unless that was done
// on this connection already. With look, it checks first that the queue is
// reachable, as it does anyway for a task another client sent.
func (p *perTaskReplies) followOn(l *lane, e *result.Entry, gen uint64, look bool) error {
	id := e.ID()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gen != gen || l.ch == nil {
		return amqp091.ErrClosed
	}
	p.fmu.Lock()
	if f := p.follows[id]; f != nil && f.gen == gen && f.chGen == l.chGen && f.entry == e {
		p.fmu.Unlock()
		return nil
	}
	p.fmu.Unlock()
	if e.State().Ready() || !p.c.reg.isPending(id, e) {
		return nil // nothing to wait for, or released or forgotten meanwhile
	}
	q := p.queueFor(id)
	declare := true
	if _, sent := e.SendInfo(); !sent || look {
		// Attaching to a task another client sent: its queue may exist
		// with another lifetime, and declaring it with ours would fail
		// (406) and take the lane's channel down. Look first, on a
		// throwaway channel.
		if l.conn == nil {
			return amqp091.ErrClosed
		}
		_, exists, err := broker.QueueExistsOn(l.conn, q)
		if node, down := broker.HomeNodeDown(err); down {
			p.markDown(e, q, node)
			return nil
		}
		if err != nil {
			return err
		}
		declare = !exists
	}
	if declare {
		// No-wait: the consume below is the round trip that tells whether
		// the channel survived the declaration (a failed declaration
		// closes the channel, and the consume then fails).
		if _, err := l.ch.QueueDeclare(q, true, false, false, true, p.c.queueArgs()); err != nil {
			return err
		}
	}
	f := &follow{id: id, entry: e, queue: q, tag: consumerTag(id, p.tagSeq.Add(1)), lane: l, gen: gen, chGen: l.chGen}
	deliveries, err := l.ch.Consume(q, f.tag, false, false, false, false, nil)
	if node, down := broker.HomeNodeDown(err); down && l.conn != nil && !l.conn.IsClosed() {
		// The declaration or the consume found the queue's node down, and
		// took the channel with it.
		p.markDown(e, q, node)
		if oerr := p.openLaneLocked(l, l.conn, gen); oerr != nil {
			return oerr
		}
		return errLaneReset
	}
	if err != nil {
		return err
	}
	p.fmu.Lock()
	if !p.c.reg.isPending(id, e) {
		// Released, forgotten or settled while the consumer was being
		// set up; release looks for the follow only after dropping the
		// entry, so it is this side's to cancel.
		p.fmu.Unlock()
		f.released.Store(true)
		p.cancelLocked(f, false)
	} else {
		p.follows[id] = f
		p.fmu.Unlock()
	}
	p.c.forward(deliveries, f)
	return nil
}

// cancelLocked cancels f's consumer on its lane's channel; the caller holds
// f.lane.mu. Unless noWait, it waits for cancel-ok, so that what the broker
// delivered before it reaches the loop (which requeues a final state)
// instead of being dropped unacknowledged by amqp091-go.
func (p *perTaskReplies) cancelLocked(f *follow, noWait bool) {
	f.cancelled = true
	if err := f.lane.ch.Cancel(f.tag, noWait); err != nil {
		p.c.log.Debug().Err(err).Str("task_id", f.id).Msg("cancel reply consumer")
	}
}

// unfollow cancels f's consumer (once) and then requeues d, if given, so
// that the final state stays in the queue for other readers.
func (p *perTaskReplies) unfollow(f *follow, d *amqp091.Delivery) {
	l := f.lane
	l.mu.Lock()
	if !f.cancelled && l.gen == f.gen && l.ch != nil {
		// With a final state to requeue, no-wait: the requeue below is sent
		// after the cancel on the same channel, so the broker has stopped
		// this consumer by then. Without one (Release, Forget), wait.
		p.cancelLocked(f, d != nil)
	}
	l.mu.Unlock()
	p.fmu.Lock()
	if p.follows[f.id] == f {
		delete(p.follows, f.id)
	}
	p.fmu.Unlock()
	if d != nil {
		_ = d.Nack(false, true)
	}
}

// take puts back what is delivered between a Release and the cancel-ok of
// its consumer: the state stays in the task's queue, for later readers.
func (p *perTaskReplies) take(m inbound) bool {
	if m.f != nil && m.f.released.Load() {
		_ = m.d.Nack(false, true)
		return false
	}
	return true
}

// done keeps a final state in its queue for other readers: it stops the
// consumer first, then requeues (off the loop: these are round trips).
// Everything else is acknowledged.
func (p *perTaskReplies) done(m inbound, meta *result.Meta) {
	if m.f != nil && meta != nil && meta.Status.Ready() && meta.TaskID == m.f.id {
		d := m.d
		p.c.wg.Add(1)
		go func() {
			defer p.c.wg.Done()
			p.unfollow(m.f, &d)
		}()
		return
	}
	_ = m.d.Ack(false)
}

// deleted runs on the loop when the broker cancelled a consumer: its
// queue was deleted.
func (p *perTaskReplies) deleted(tag string) {
	p.fmu.Lock()
	var f *follow
	for _, x := range p.follows {
		if x.tag == tag {
			f = x
			break
		}
	}
	if f != nil {
		delete(p.follows, f.id)
	}
	p.fmu.Unlock()
	if f == nil {
		return
	}
	// Deleted, or on a cluster node that went down? Ask, off the loop.
	p.c.wg.Add(1)
	go func() {
		defer p.c.wg.Done()
		if node, ok := p.homeNodeDown(f.queue); ok {
			p.markDown(f.entry, f.queue, node)
			return
		}
		p.failDeleted(f.id, f.queue)
	}()
}

func (p *perTaskReplies) failDeleted(id, queue string) {
	c := p.c
	c.stats.deleted.Add(1)
	err := fmt.Errorf("%w: %q (task %s)", ErrReplyQueueDeleted, queue, id)
	c.log.Error().Str("queue", queue).Str("task_id", id).Msg("reply queue deleted while its result was pending")
	if e := c.reg.lookup(id); e != nil && e.Fail(err) {
		c.reg.drop(id)
	}
}

func (p *perTaskReplies) followOf(id string) *follow {
	p.fmu.Lock()
	defer p.fmu.Unlock()
	return p.follows[id]
}

// release cancels id's consumer, if it was set up for e: another
// AsyncResult may have attached to id again meanwhile, with a follow of
// its own, and that one stays.
func (p *perTaskReplies) release(id string, e *result.Entry) {
	if f := p.followOf(id); f != nil && f.entry == e {
		f.released.Store(true)
		p.unfollow(f, nil)
	}
}

// forget cancels id's consumer and deletes its queue. The deletion is
// retried once when the connection it was sent on dies under it (a killed
// connection), so that a Forget racing a reconnect still deletes.
func (p *perTaskReplies) forget(ctx context.Context, id string) error {
	if f := p.followOf(id); f != nil {
		p.unfollow(f, nil)
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var ch *amqp091.Channel
		ch, err = p.c.conn.Channel(ctx)
		if err != nil {
			return broker.WaitErr(ctx, p.c.conn, err)
		}
		_, err = ch.QueueDelete(p.queueFor(id), false, false, false)
		_ = ch.Close()
		if err == nil || broker.IsCode(err, amqp091.NotFound) {
			return nil
		}
		if !broker.ConnLost(err) && !broker.IsCode(err, amqp091.ConnectionForced) && !broker.IsCode(err, amqp091.ChannelError) {
			break
		}
	}
	return fmt.Errorf("stalk: delete reply queue of task %s: %w", id, err)
}

// exists reports whether id's queue holds a stored state.
func (p *perTaskReplies) exists(ctx context.Context, id string) (bool, error) {
	conn, err := p.c.conn.Connection(ctx)
	if err != nil {
		return false, broker.WaitErr(ctx, p.c.conn, err)
	}
	q, ok, err := broker.QueueExistsOn(conn, p.queueFor(id))
	if err != nil {
		return false, fmt.Errorf("stalk: check reply queue of task %s: %w", id, err)
	}
	return ok && q.Messages > 0, nil
}
