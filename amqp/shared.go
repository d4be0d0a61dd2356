package amqp

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/result"
)

// sharedReplies is the shared reply mode: one durable reply queue per
// client, with x-expires, consumed on one channel; results are routed by
// task id, as Celery's rpc:// backend does.
type sharedReplies struct {
	c     *consumer
	queue string
	ch    atomic.Pointer[amqp091.Channel]
	tags  atomic.Uint64

	// down says why the queue is unreachable (a classic queue whose
	// cluster node is down), "" while it is not; retry looks for it again.
	mu    sync.Mutex
	down  string
	retry bool

	// Acknowledgements are batched: the last delivery not yet acknowledged,
	// and how many it covers. Loop goroutine only.
	ackBy      amqp091.Acknowledger // the channel of the last delivery not acknowledged yet
	ackTag     uint64               // and its tag
	ackPending int
}

// ackBatch is the most deliveries one multiple-ack covers in shared mode.
const ackBatch = 64

func newSharedReplies(c *consumer, queue string) *sharedReplies {
	return &sharedReplies{c: c, queue: queue}
}

func (s *sharedReplies) queueFor(string) string { return s.queue }
func (s *sharedReplies) channels() int          { return 1 }

func (s *sharedReplies) setup(conn *amqp091.Connection, gen uint64) error {
	err := s.open(conn)
	if node, down := broker.HomeNodeDown(err); down {
		// The client is Ready anyway: tasks already waiting are marked,
		// new sends are refused, and the queue is looked for every second.
		s.markDown(node)
		return nil
	}
	if err == nil {
		s.markUp()
		if s.c.multiNode && gen > 1 {
			s.recheckLater(conn)
		}
	}
	return err
}

// recheckLater looks at the queue again after recheckDelay: right after a
// node dies, the other nodes may accept a consumer on a queue of the dead
// node that will never deliver.
func (s *sharedReplies) recheckLater(conn *amqp091.Connection) {
	s.c.wg.Add(1)
	go func() {
		defer s.c.wg.Done()
		select {
		case <-s.c.done:
			return
		case <-time.After(recheckDelay):
		}
		if conn.IsClosed() {
			return
		}
		_, _, err := broker.QueueExistsOn(conn, s.queue)
		if node, down := broker.HomeNodeDown(err); down {
			if ch := s.ch.Load(); ch != nil {
				_ = ch.Close()
			}
			s.markDown(node)
		}
	}()
}

// open opens the reply channel on conn and consumes the queue on it.
func (s *sharedReplies) open(conn *amqp091.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("stalk: open reply channel: %w", err)
	}
	if err := ch.Qos(s.c.cfg.prefetch, 0, false); err != nil {
		return fmt.Errorf("stalk: set prefetch: %w", err)
	}
	cancels := ch.NotifyCancel(make(chan string, 1))
	s.c.wg.Add(1)
	go func() {
		defer s.c.wg.Done()
		for range cancels {
			s.c.post(s.deleted)
		}
	}()
	s.ch.Store(ch)
	return s.consume(ch)
}

// consume declares the shared reply queue and consumes it on ch.
func (s *sharedReplies) consume(ch *amqp091.Channel) error {
	if _, err := ch.QueueDeclare(s.queue, true, false, false, false, s.c.queueArgs()); err != nil {
		return fmt.Errorf("stalk: declare reply queue %q: %w", s.queue, err)
	}
	tag := fmt.Sprintf("stalk-shared-%d", s.tags.Add(1))
	deliveries, err := ch.Consume(s.queue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("stalk: consume reply queue %q: %w", s.queue, err)
	}
	s.c.forward(deliveries, nil)
	return nil
}

// follow has nothing to do per task: the queue is consumed as long as the
// connection is up. While the queue is unreachable, a result sent to it
// would be dropped, so a new task is refused.
func (s *sharedReplies) follow(ctx context.Context, _ *result.Entry) error {
	if err := waitBroker(ctx, s.c.conn); err != nil {
		return err
	}
	s.mu.Lock()
	down := s.down
	s.mu.Unlock()
	if down != "" {
		return fmt.Errorf("%w: %s", ErrReplyQueueUnavailable, down)
	}
	return nil
}

// markDown records that the queue's home node is down: pending waits say
// so if they end, and a goroutine looks for the queue every second.
func (s *sharedReplies) markDown(node string) {
	reason := fmt.Sprintf("reply queue %q is on node %s, which is down", s.queue, node)
	s.mu.Lock()
	s.down = reason
	start := !s.retry
	s.retry = true
	s.mu.Unlock()
	for _, e := range s.c.reg.pendingEntries() {
		e.MarkUnreachable(reason)
	}
	s.c.stats.unreachable.Add(1)
	s.c.log.Warn().Str("queue", s.queue).Str("node", node).Msg("shared reply queue unreachable: its home node is down; waiting for it")
	if start {
		s.c.wg.Add(1)
		go s.watchDown()
	}
}

func (s *sharedReplies) markUp() {
	s.mu.Lock()
	was := s.down
	s.down = ""
	s.mu.Unlock()
	if was == "" {
		return
	}
	for _, e := range s.c.reg.pendingEntries() {
		e.MarkUnreachable("")
	}
	s.c.log.Info().Str("queue", s.queue).Msg("shared reply queue reachable again")
}

// watchDown tries, every second, to consume the queue again, until it
// works or the client closes.
func (s *sharedReplies) watchDown() {
	defer s.c.wg.Done()
	defer func() {
		s.mu.Lock()
		s.retry = false
		s.mu.Unlock()
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.c.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		down := s.down
		s.mu.Unlock()
		if down == "" {
			return
		}
		ctx, cancel := context.WithTimeout(s.c.conn.Life(), 5*time.Second)
		conn, err := s.c.conn.Connection(ctx)
		cancel()
		if err != nil {
			continue
		}
		if err := s.open(conn); err == nil {
			s.markUp()
			return
		} else if _, stillDown := broker.HomeNodeDown(err); !stillDown {
			s.c.log.Debug().Err(err).Msg("consume the shared reply queue again")
		}
	}
}

func (s *sharedReplies) release(string, *result.Entry)                {}
func (s *sharedReplies) forget(context.Context, string) error         { return nil }
func (s *sharedReplies) exists(context.Context, string) (bool, error) { return false, nil }
func (s *sharedReplies) take(inbound) bool                            { return true }

// done acknowledges in batches with multiple=true: every delivery on the
// shared channel is acknowledged once handled, so a multiple-ack never
// covers one that must stay.
func (s *sharedReplies) done(m inbound, _ *result.Meta) {
	if s.ackBy != nil && s.ackBy != m.d.Acknowledger {
		s.flush() // the channel changed (a reconnect)
	}
	s.ackBy, s.ackTag = m.d.Acknowledger, m.d.DeliveryTag
	s.ackPending++
	if s.ackPending >= s.ackEvery() {
		s.flush()
	}
}

// ackEvery is how many deliveries one acknowledgement covers at most:
// ackBatch, or half the prefetch when that is smaller, so that the broker
// never waits for an acknowledgement the loop is holding.
func (s *sharedReplies) ackEvery() int {
	if pf := s.c.cfg.prefetch / 2; pf > 0 && pf < ackBatch {
		return pf
	}
	return ackBatch
}

// idle reports whether acknowledgements are waiting for a flush.
func (s *sharedReplies) idle() bool { return s.ackBy != nil }

// flush sends the batched acknowledgement.
func (s *sharedReplies) flush() {
	if s.ackBy == nil {
		return
	}
	_ = s.ackBy.Ack(s.ackTag, s.ackPending > 1)
	s.ackBy, s.ackPending = nil, 0
}

// deleted runs on the loop when the broker cancelled the shared consumer:
// its queue was deleted, or, on a cluster, its node went down.
func (s *sharedReplies) deleted() {
	c := s.c
	ctx, cancel := context.WithTimeout(c.conn.Life(), 2*time.Second)
	conn, cerr := c.conn.Connection(ctx)
	cancel()
	if cerr == nil {
		_, _, qerr := broker.QueueExistsOn(conn, s.queue)
		if node, down := broker.HomeNodeDown(qerr); down {
			s.flush()
			s.markDown(node)
			return
		}
	}
	c.stats.deleted.Add(1)
	err := fmt.Errorf("%w: %q was deleted while results were pending; they may be lost", ErrReplyQueueDeleted, s.queue)
	c.log.Error().Str("queue", s.queue).Msg("shared reply queue deleted; failing pending results and redeclaring it")
	// Redeclare and re-consume first, so that tasks sent from now on have
	// a queue to be answered on; a reconnect does it if the channel died.
	s.flush()
	if ch := s.ch.Load(); ch == nil || s.consume(ch) != nil {
		c.conn.Reset(err)
	}
	c.failPending(err)
}
