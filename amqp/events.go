package amqp

import (
	"context"
	"fmt"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/result"
)

// WithEvents runs a Celery event receiver on the client's results
// connection and keeps an events.State (Client.Events). AsyncResult's
// Worker, Retries, DateDone and Name are then filled from task events too,
// also for tasks this process did not send. The workers must send task
// events (celery worker -E). Default: off.
func WithEvents(opts ...events.StateOption) Option {
	return func(c *config) { c.events, c.eventStateOpts = true, opts }
}

type eventsExt struct {
	recv  *events.Receiver
	sub   *events.Subscription
	state *events.State

	mu sync.Mutex // guards ch: PublishTaskSent wants exclusive use
	ch *amqp091.Channel
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
	recv, err := events.NewReceiver(ctx, c.resConn, events.WithLogger(c.log), events.TaskEvents())
	if err != nil {
		return fmt.Errorf("stalk: event receiver: %w", err)
	}
	sub, err := recv.Subscribe(c.resConn.Life(), st.Apply)
	if err != nil {
		recv.Close()
		return fmt.Errorf("stalk: event receiver: %w", err)
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

// publishSentEvent publishes task-sent for msg, when WithSentEvents is on.
// A failure is logged: the task itself was sent and confirmed.
func (c *Client) publishSentEvent(ctx context.Context, msg *taskMessage) {
	if !c.cfg.sentEvents {
		return
	}
	ev := events.TaskSent{
		UUID:       msg.id,
		RootID:     headerString(msg.pub.Headers["root_id"]),
		ParentID:   headerString(msg.pub.Headers["parent_id"]),
		Name:       headerString(msg.pub.Headers["task"]),
		Args:       headerString(msg.pub.Headers["argsrepr"]),
		Kwargs:     headerString(msg.pub.Headers["kwargsrepr"]),
		ETA:        headerString(msg.pub.Headers["eta"]),
		Expires:    headerString(msg.pub.Headers["expires"]),
		Queue:      msg.routingKey,
		Exchange:   msg.exchange,
		RoutingKey: msg.routingKey,
	}
	if msg.queue != "" {
		ev.Queue = msg.queue
	}
	c.evx.mu.Lock()
	defer c.evx.mu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		if c.evx.ch == nil || c.evx.ch.IsClosed() {
			conn, err := c.pubConn.Connection(ctx)
			if err != nil {
				c.log.Warn().Err(err).Str("task_id", msg.id).Msg("task-sent event not published")
				return
			}
			ch, err := conn.Channel()
			if err != nil {
				c.log.Warn().Err(err).Str("task_id", msg.id).Msg("task-sent event not published")
				return
			}
			c.evx.ch = ch
		}
		err := events.PublishTaskSent(ctx, c.evx.ch, ev)
		if err == nil {
			return
		}
		if !c.evx.ch.IsClosed() || attempt == 1 {
			c.log.Warn().Err(err).Str("task_id", msg.id).Msg("task-sent event not published")
			return
		}
	}
}

func (c *Client) closeEvents() {
	if c.evx.sub != nil {
		c.evx.sub.Stop()
	}
	if c.evx.recv != nil {
		c.evx.recv.Close()
	}
	c.evx.mu.Lock()
	if c.evx.ch != nil {
		c.evx.ch.Close()
	}
	c.evx.mu.Unlock()
}

func headerString(v any) string {
	s, _ := v.(string)
	return s
}
