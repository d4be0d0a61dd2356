package amqp

import (
	"context"
	"fmt"
	"sync/atomic"

	amqp091 "github.com/rabbitmq/amqp091-go"

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

	// Acknowledgements are batched: the last delivery not yet acknowledged,
	// and how many it covers. Loop goroutine only.
	ackLast    *amqp091.Delivery
	ackPending int
}

// ackBatch is the most deliveries one multiple-ack covers in shared mode.
const ackBatch = 64

func newSharedReplies(c *consumer, queue string) *sharedReplies {
	return &sharedReplies{c: c, queue: queue}
}

func (s *sharedReplies) queueFor(string) string { return s.queue }
func (s *sharedReplies) channels() int          { return 1 }

func (s *sharedReplies) setup(conn *amqp091.Connection, _ uint64) error {
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
// connection is up.
func (s *sharedReplies) follow(ctx context.Context, _ *result.Entry) error {
	return waitBroker(ctx, s.c.conn)
}

func (s *sharedReplies) release(string, *result.Entry)                {}
func (s *sharedReplies) forget(context.Context, string) error         { return nil }
func (s *sharedReplies) exists(context.Context, string) (bool, error) { return false, nil }
func (s *sharedReplies) take(inbound) bool                            { return true }

// done acknowledges in batches with multiple=true: every delivery on the
// shared channel is acknowledged once handled, so a multiple-ack never
// covers one that must stay.
func (s *sharedReplies) done(m inbound, _ *result.Meta) {
	d := &m.d
	if s.ackLast != nil && s.ackLast.Acknowledger != d.Acknowledger {
		s.idle() // the channel changed (a reconnect)
	}
	s.ackLast = d
	s.ackPending++
	if s.ackPending >= ackBatch {
		s.idle()
	}
}

// idle flushes the batched acknowledgement.
func (s *sharedReplies) idle() {
	if s.ackLast == nil {
		return
	}
	_ = s.ackLast.Ack(s.ackPending > 1)
	s.ackLast, s.ackPending = nil, 0
}

// deleted runs on the loop when the broker cancelled the shared consumer:
// its queue was deleted.
func (s *sharedReplies) deleted() {
	c := s.c
	c.stats.deleted.Add(1)
	err := fmt.Errorf("%w: %q was deleted while results were pending; they may be lost", ErrReplyQueueDeleted, s.queue)
	c.log.Error().Str("queue", s.queue).Msg("shared reply queue deleted; failing pending results and redeclaring it")
	// Redeclare and re-consume first, so that tasks sent from now on have
	// a queue to be answered on; a reconnect does it if the channel died.
	s.idle()
	if ch := s.ch.Load(); ch == nil || s.consume(ch) != nil {
		c.conn.Reset(err)
	}
	c.failPending(err)
}
