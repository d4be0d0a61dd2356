package amqp

import (
	"context"
	"fmt"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
	"github.com/stalk-dev/stalk/result"
)

type eventsExt struct {
	recv  *events.Receiver
	sub   *events.Subscription
	state *events.State
}

// Events returns the event State kept with WithEvents, or nil.
func (c *Client) Events() *events.State { return c.evx.state }

func (c *Client) startEvents(ctx context.Context) error {
	if !c.cfg.events {
		return nil
	}
	st := events.NewState(c.cfg.eventStateOpts...)
	st.OnTask(func(t events.Task) {
		if e := c.cons.reg.lookup(t.ID); e != nil {
			observeTask(e, t)
		}
	})
	recv, err := events.Dial(ctx, c.url, events.WithLogger(c.log), events.TaskEvents(),
		events.ConnectionName(c.cfg.name+"-events"), events.WithTLS(c.cfg.tls), events.WithBackoff(c.cfg.backoff), events.WithFailover(c.cfg.failover.String()))
	if err != nil {
		return fmt.Errorf("stalk: event receiver: %w", trimPrefix(err))
	}
	sub, err := recv.Subscribe(c.resConn.Life(), st.Apply)
	if err != nil {
		recv.Close()
		return fmt.Errorf("stalk: event receiver: %w", trimPrefix(err))
	}
	c.evx.recv, c.evx.sub, c.evx.state = recv, sub, st
	return nil
}

func observeTask(e *result.Entry, t events.Task) {
	done := t.Succeeded
	if done.IsZero() {
		done = t.Failed
	}
	if done.IsZero() {
		done = t.Revoked
	}
	e.Observe(t.Worker, t.Retries, done, t.Name)
}

// seedFromEvents fills a newly attached entry from what the event stream
// already said about its task.
func (c *Client) seedFromEvents(e *result.Entry) {
	if c.evx.state == nil {
		return
	}
	if t, ok := c.evx.state.Task(e.ID()); ok {
		observeTask(e, t)
	}
}

// publishSentEvent publishes task-sent for m, sent through r, when
// WithSentEvents is on. Its timestamp is when the task was built, before
// its publish, so that it never comes after the worker's task-received. It
// is published as Celery publishes events: not mandatory (nobody need be
// listening), and a failure is logged, not returned: the task itself was
// sent and confirmed.
func (c *Client) publishSentEvent(ctx context.Context, m *celery.Message, r celery.Route) {
	if !c.cfg.sentEvents {
		return
	}
	ev := events.NewTaskSent(events.TaskSent{
		UUID:       m.ID,
		RootID:     headerString(m.Headers["root_id"]),
		ParentID:   headerString(m.Headers["parent_id"]),
		Name:       m.Name,
		Args:       m.ArgsRepr,
		Kwargs:     m.KwRepr,
		ETA:        headerString(m.Headers["eta"]),
		Expires:    headerString(m.Headers["expires"]),
		Queue:      r.Key,
		Exchange:   r.Exchange,
		RoutingKey: r.Key,
		Header:     events.Header{Time: m.Built},
	})
	if r.Queue != nil {
		ev.Queue = r.Queue.Name
	}
	msg, err := events.TaskSentPublishing(ev)
	if err == nil {
		err = c.pub.Ensure(ctx, "exchange\x00"+events.Exchange, func(conn *amqp091.Connection) error {
			ch, err := conn.Channel()
			if err != nil {
				return err
			}
			defer ch.Close()
			return events.DeclareExchange(ch)
		})
	}
	if err == nil {
		err = c.pub.Publish(ctx, broker.Message{Exchange: events.Exchange, Key: events.RoutingKeyTaskSent, Msg: msg})
	}
	if err != nil {
		c.log.Warn().Err(err).Str("task_id", m.ID).Msg("task-sent event not published")
	}
}

func (c *Client) closeEvents() {
	if c.evx.sub != nil {
		c.evx.sub.Stop()
	}
	if c.evx.recv != nil {
		c.evx.recv.Close()
	}
}

func headerString(v any) string {
	s, _ := v.(string)
	return s
}
