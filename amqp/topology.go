package amqp

import (
	"context"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
)

// route decides where the message of call goes, and makes sure its queue
// exists as the fleet declares it: resolved through the topology, routed
// as Celery routes (the default exchange for a direct exchange, else the
// queue's exchange and routing key), and, for a delay of a second or more
// to a quorum queue on a non-direct exchange, through native delayed
// delivery.
func (c *Client) route(ctx context.Context, call *celery.Call, m *celery.Message) (celery.Route, error) {
	q, err := c.cfg.topo.Resolve(call.Queue)
	if err != nil {
		return celery.Route{}, err
	}
	r := celery.RouteFor(q, call.Exchange, call.RoutingKey)
	if r.Queue == nil {
		return r, nil // routed by exchange or key: the caller's
	}
	if err := c.ensureQueue(ctx, *r.Queue); err != nil {
		return celery.Route{}, err
	}
	if m.ETA.IsZero() || c.cfg.delayed == DelayedOff {
		return r, nil
	}
	// A countdown is the delay, as Celery takes it; an ETA is counted from
	// now. Either way the eta header keeps the exact time, and the worker
	// holds what the whole seconds leave.
	delay := time.Until(m.ETA).Seconds()
	if call.Countdown != nil {
		delay = call.Countdown.Seconds()
	}
	dr, _, ok := celery.DelayedRoute(q, delay)
	if !ok {
		if c.cfg.delayed == DelayedRequired && delay >= 1 {
			return celery.Route{}, fmt.Errorf("%w: queue %q is a %s queue on a %s exchange; native delayed delivery needs a quorum queue on a non-direct exchange", ErrNoDelayedDelivery, q.Name, q.Type, q.ExchangeType)
		}
		return r, nil
	}
	exists, err := c.pub.ExchangeExists(ctx, celery.DelayedExchange)
	if err != nil {
		return celery.Route{}, err
	}
	if !exists {
		if c.cfg.delayed == DelayedRequired {
			return celery.Route{}, fmt.Errorf("%w: exchange %s does not exist (no Celery 5.5+ worker with quorum queues has declared it on this vhost)", ErrNoDelayedDelivery, celery.DelayedExchange)
		}
		c.cons.stats.delayedFallback.Add(1)
		c.delayedWarn.Do(func() {
			c.log.Warn().Str("queue", q.Name).Str("exchange", celery.DelayedExchange).
				Msg("native delayed delivery is not set up on this vhost (no Celery 5.5+ worker with quorum queues has declared it); sending delayed tasks as ETA tasks the worker holds until they are due")
		})
		return r, nil
	}
	return dr, nil
}

// ensureQueue makes sure q exists, once per connection: a queue that
// exists is used as it is (a passive declare: never a 406); a missing one
// is declared as configured (exchange, queue with its type and arguments,
// binding), unless the workers own the topology.
func (c *Client) ensureQueue(ctx context.Context, q celery.Queue) error {
	return c.pub.Ensure(ctx, "queue\x00"+q.Name, func(conn *amqp091.Connection) error {
		_, exists, err := broker.QueueExistsOn(conn, q.Name)
		if err != nil || exists {
			return err
		}
		if !c.cfg.declare {
			return fmt.Errorf("%w: %q does not exist, and stalk does not declare task queues (WithDeclareQueues(false)): start a worker for it first", ErrQueueNotFound, q.Name)
		}
		return declareQueue(conn, q)
	})
}

// declareQueue declares q's exchange (unless it exists), q, and the
// binding, with Celery's flags: durable, not auto-deleted.
func declareQueue(conn *amqp091.Connection, q celery.Queue) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if q.Exchange != "" {
		exists, err := broker.ExchangeExistsOn(conn, q.Exchange)
		if err != nil {
			return err
		}
		if !exists {
			if err := ch.ExchangeDeclare(q.Exchange, q.ExchangeType, true, false, false, false, nil); err != nil {
				return fmt.Errorf("declare exchange %q: %w", q.Exchange, err)
			}
		}
	}
	if _, err := ch.QueueDeclare(q.Name, true, false, false, false, amqpTable(q.DeclareArgs())); err != nil {
		return fmt.Errorf("declare queue %q: %w", q.Name, err)
	}
	if q.Exchange != "" {
		if err := ch.QueueBind(q.Name, q.RoutingKey, q.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %q to %q: %w", q.Name, q.Exchange, err)
		}
	}
	return nil
}
