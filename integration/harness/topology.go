package harness

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// CeleryQueue describes one entry of a Celery app's task_queues, as a
// Celery 5.5+ worker declares it. Only Name is required.
type CeleryQueue struct {
	Name         string         // queue name
	Exchange     string         // default: Name
	ExchangeType string         // default: "direct"
	RoutingKey   string         // binding key; default: Name
	Quorum       bool           // x-queue-type=quorum
	Args         map[string]any // further queue arguments
}

func (q CeleryQueue) withDefaults() (CeleryQueue, error) {
	if q.Name == "" {
		return q, errors.New("harness: CeleryQueue.Name is required")
	}
	if q.Exchange == "" {
		q.Exchange = q.Name
	}
	if q.ExchangeType == "" {
		q.ExchangeType = "direct"
	}
	if q.RoutingKey == "" {
		q.RoutingKey = q.Name
	}
	return q, nil
}

func (q CeleryQueue) arguments() amqp091.Table {
	args := amqp091.Table{}
	for k, v := range q.Args {
		args[k] = v
	}
	if q.Quorum {
		args["x-queue-type"] = "quorum"
	}
	if len(args) == 0 {
		return nil
	}
	return args
}

// Native delayed delivery, as kombu 5.6 (kombu/transport/native_delayed_delivery.py)
// declares it for Celery 5.5+ workers.
const (
	// DelayedLevels is the number of celery_delayed_N levels: a delay is
	// written as 28 binary digits.
	DelayedLevels = 28
	// DelayedDeliveryExchange is where the last level dead-letters to; each
	// queue on a non-direct exchange is reached from it through its exchange.
	DelayedDeliveryExchange = "celery_delayed_delivery"
	// DelayedEntryExchange is the exchange a producer publishes delayed
	// messages to.
	DelayedEntryExchange = "celery_delayed_27"
)

// DelayedLevel returns the name of level n's exchange and queue.
func DelayedLevel(n int) string { return "celery_delayed_" + strconv.Itoa(n) }

// DelayedRoutingKey returns the routing key that delays a message by
// seconds (at least 1, below 2^28) on its way to a queue bound with
// routingKey: the 28 binary digits of seconds joined by dots, a dot and
// routingKey, as kombu's calculate_routing_key writes it.
func DelayedRoutingKey(seconds int64, routingKey string) string {
	bits := fmt.Sprintf("%028b", seconds)
	var b strings.Builder
	b.Grow(2*len(bits) + len(routingKey))
	for i := 0; i < len(bits); i++ {
		b.WriteByte(bits[i])
		b.WriteByte('.')
	}
	b.WriteString(routingKey)
	return b.String()
}

// ttlArg is an integer argument typed as py-amqp sends it: a 32-bit
// signed int when it fits, a 64-bit one otherwise.
func ttlArg(ms int64) any {
	if ms >= -1<<31 && ms < 1<<31 {
		return int32(ms)
	}
	return ms
}

// delayedQueueArgs are level n's queue arguments, always the same, so
// that declaring the topology again is a no-op.
func delayedQueueArgs(n int) amqp091.Table {
	dlx := DelayedDeliveryExchange
	if n > 0 {
		dlx = DelayedLevel(n - 1)
	}
	return amqp091.Table{
		"x-queue-type":           "quorum",
		"x-overflow":             "reject-publish",
		"x-message-ttl":          ttlArg(int64(1000) << n),
		"x-dead-letter-exchange": dlx,
		"x-dead-letter-strategy": "at-least-once",
	}
}

// delayedBindingKey is the key of level n's bindings: 27-n "*." and then
// digit+".#".
func delayedBindingKey(n int, digit string) string {
	return strings.Repeat("*.", DelayedLevels-1-n) + digit + ".#"
}

// withChannel dials url (bounded by ctx's deadline, or 30 s), opens a
// channel and runs fn on it.
func withChannel(ctx context.Context, url string, fn func(ch *amqp091.Channel) error) error {
	timeout := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	conn, err := amqp091.DialConfig(url, amqp091.Config{Dial: amqp091.DefaultDial(timeout)})
	if err != nil {
		return err
	}
	defer conn.Close()
	// Close the connection when ctx ends, so that a blocked call returns.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := fn(ch); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%w (%v)", cerr, err)
		}
		return err
	}
	return ch.Close()
}

// DeclareCeleryQueue declares q the way a Celery 5.5+ worker declares an
// entry of its task_queues: the exchange (durable, not auto-deleted), the
// queue (durable, not exclusive, not auto-deleted; x-queue-type=quorum when
// q.Quorum, plus q.Args) and the binding with q.RoutingKey.
func DeclareCeleryQueue(ctx context.Context, url string, q CeleryQueue) error {
	q, err := q.withDefaults()
	if err != nil {
		return err
	}
	return withChannel(ctx, url, func(ch *amqp091.Channel) error {
		return declareCeleryQueue(ch, q)
	})
}

func declareCeleryQueue(ch *amqp091.Channel, q CeleryQueue) error {
	if err := ch.ExchangeDeclare(q.Exchange, q.ExchangeType, true, false, false, false, nil); err != nil {
		return fmt.Errorf("harness: declare exchange %q: %w", q.Exchange, err)
	}
	if _, err := ch.QueueDeclare(q.Name, true, false, false, false, q.arguments()); err != nil {
		return fmt.Errorf("harness: declare queue %q: %w", q.Name, err)
	}
	if err := ch.QueueBind(q.Name, q.RoutingKey, q.Exchange, false, nil); err != nil {
		return fmt.Errorf("harness: bind queue %q to %q: %w", q.Name, q.Exchange, err)
	}
	return nil
}

// DeclareDelayedDelivery declares Celery's native delayed delivery
// topology exactly as a Celery 5.6.3 worker does (see
// /work/shared/fixtures/celery-5.6.3/topology-quorum-topic.txt): for each
// level N from 27 down to 0 a durable topic exchange celery_delayed_N and a
// quorum queue celery_delayed_N (x-overflow reject-publish, x-message-ttl
// 2^N s, dead-lettering at-least-once to celery_delayed_N-1, or to
// celery_delayed_delivery for level 0) bound to it with *.….1.#; each
// level's exchange bound to the level below with *.….0.#; the topic
// exchange celery_delayed_delivery. Then each of queues is declared with
// DeclareCeleryQueue and, when its exchange is not a direct one, its
// exchange is bound to celery_delayed_delivery and the queue to its
// exchange, both with key #.<routing key> (the routing key itself if it
// starts with '#').
//
// The topology belongs to the whole vhost and other test packages may be
// using it: declaring it again, with the same arguments, changes nothing,
// and nothing here deletes it (see DeleteDelayedDelivery).
func DeclareDelayedDelivery(ctx context.Context, url string, queues ...CeleryQueue) error {
	qs := make([]CeleryQueue, 0, len(queues))
	for _, q := range queues {
		q, err := q.withDefaults()
		if err != nil {
			return err
		}
		qs = append(qs, q)
	}
	return withChannel(ctx, url, func(ch *amqp091.Channel) error {
		for n := DelayedLevels - 1; n >= 0; n-- {
			name := DelayedLevel(n)
			if err := ch.ExchangeDeclare(name, "topic", true, false, false, false, nil); err != nil {
				return fmt.Errorf("harness: declare exchange %q: %w", name, err)
			}
			if _, err := ch.QueueDeclare(name, true, false, false, false, delayedQueueArgs(n)); err != nil {
				return fmt.Errorf("harness: declare queue %q: %w", name, err)
			}
			if err := ch.QueueBind(name, delayedBindingKey(n, "1"), name, false, nil); err != nil {
				return fmt.Errorf("harness: bind queue %q: %w", name, err)
			}
		}
		for n := DelayedLevels - 1; n > 0; n-- {
			if err := ch.ExchangeBind(DelayedLevel(n-1), delayedBindingKey(n, "0"), DelayedLevel(n), false, nil); err != nil {
				return fmt.Errorf("harness: bind exchange %q to %q: %w", DelayedLevel(n-1), DelayedLevel(n), err)
			}
		}
		if err := ch.ExchangeDeclare(DelayedDeliveryExchange, "topic", true, false, false, false, nil); err != nil {
			return fmt.Errorf("harness: declare exchange %q: %w", DelayedDeliveryExchange, err)
		}
		if err := ch.ExchangeBind(DelayedDeliveryExchange, delayedBindingKey(0, "0"), DelayedLevel(0), false, nil); err != nil {
			return fmt.Errorf("harness: bind exchange %q: %w", DelayedDeliveryExchange, err)
		}
		for _, q := range qs {
			if err := declareCeleryQueue(ch, q); err != nil {
				return err
			}
			if q.ExchangeType == "direct" {
				continue // kombu skips direct exchanges (with a warning)
			}
			key := q.RoutingKey
			if !strings.HasPrefix(key, "#") {
				key = "#." + key
			}
			if err := ch.ExchangeBind(q.Exchange, key, DelayedDeliveryExchange, false, nil); err != nil {
				return fmt.Errorf("harness: bind exchange %q to %q: %w", q.Exchange, DelayedDeliveryExchange, err)
			}
			if err := ch.QueueBind(q.Name, key, q.Exchange, false, nil); err != nil {
				return fmt.Errorf("harness: bind queue %q to %q: %w", q.Name, q.Exchange, err)
			}
		}
		return nil
	})
}

// DeleteDelayedDelivery deletes the native delayed delivery topology: the
// 28 levels' queues (with any delayed messages in them) and exchanges, and
// celery_delayed_delivery. The topology is shared by the whole vhost, so
// only call it when nothing else can be using it; the tests here do so only
// when STALK_DELETE_DELAYED=1.
func DeleteDelayedDelivery(ctx context.Context, url string) error {
	return withChannel(ctx, url, func(ch *amqp091.Channel) error {
		for n := 0; n < DelayedLevels; n++ {
			if _, err := ch.QueueDelete(DelayedLevel(n), false, false, false); err != nil {
				return fmt.Errorf("harness: delete queue %q: %w", DelayedLevel(n), err)
			}
		}
		for n := 0; n < DelayedLevels; n++ {
			if err := ch.ExchangeDelete(DelayedLevel(n), false, false); err != nil {
				return fmt.Errorf("harness: delete exchange %q: %w", DelayedLevel(n), err)
			}
		}
		if err := ch.ExchangeDelete(DelayedDeliveryExchange, false, false); err != nil {
			return fmt.Errorf("harness: delete exchange %q: %w", DelayedDeliveryExchange, err)
		}
		return nil
	})
}

// DeleteCeleryQueue deletes q's queue and exchange (unless the exchange is
// one of amq.* or the default), which also removes their bindings,
// including those to celery_delayed_delivery. It is for cleanups.
func DeleteCeleryQueue(ctx context.Context, url string, q CeleryQueue) error {
	q, err := q.withDefaults()
	if err != nil {
		return err
	}
	return withChannel(ctx, url, func(ch *amqp091.Channel) error {
		if _, err := ch.QueueDelete(q.Name, false, false, false); err != nil {
			return fmt.Errorf("harness: delete queue %q: %w", q.Name, err)
		}
		if strings.HasPrefix(q.Exchange, "amq.") {
			return nil
		}
		if err := ch.ExchangeDelete(q.Exchange, false, false); err != nil {
			return fmt.Errorf("harness: delete exchange %q: %w", q.Exchange, err)
		}
		return nil
	})
}
