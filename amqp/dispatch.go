package amqp

import (
	"context"
	"fmt"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
	"github.com/stalk-dev/stalk/result"
)

// sent is what dispatch made of a plan: the results, linked.
type sent struct {
	last  *result.AsyncResult // the last task of the (first) chain
	group *result.GroupResult // the group, when the plan is one or a chain ends with one
}

// dispatch is the one send path, for Send, Chain, Group and Apply: it
// gives every task its id and builds every message (a bad argument fails
// here, before anything is published), registers an entry for every task
// and follows its reply queue, then publishes the messages in order and
// links the results. Anything registered for a task that will not be
// published is dropped under ctx: its reply queue is deleted if ctx
// allows, and otherwise expires by itself.
func (c *Client) dispatch(ctx context.Context, p *celery.Plan) (_ *sent, err error) {
	// One producer span per message; its context goes into the headers of
	// every task of its chain before the messages are built.
	spans := c.tel.startSends(ctx, p)
	ended := 0
	defer func() {
		for _, sp := range spans[ended:] {
			if err != nil {
				sp.RecordError(err)
				sp.SetStatus(codes.Error, err.Error())
			}
			sp.End()
		}
	}()
	fr, err := c.planner.Freeze(p, c.cons.mode.queueFor)
	if err != nil {
		return nil, err
	}
	if c.pubConn.State() == broker.Closed {
		return nil, ErrClosed
	}
	tasks := fr.Tasks()
	entries := make(map[*celery.Task]*result.Entry, len(tasks))
	now := time.Now()
	var ignored map[*celery.Task]*result.Entry
	for _, t := range tasks {
		e := result.NewEntry(t.Call.TaskID)
		queue := t.Call.RoutingKey
		if queue == "" {
			queue = t.Call.Queue
		}
		e.SetSendInfo(result.SendInfo{Name: t.Name, Args: t.Call.Args, Kwargs: t.Call.Kwargs, Queue: queue, Sent: now})
		if t.Call.Ignore {
			// No result will come: the entry only answers Name, Queue and
			// the like, so that asking them never follows a reply queue
			// nobody writes to. It is neither registered nor followed.
			if ignored == nil {
				ignored = make(map[*celery.Task]*result.Entry)
			}
			ignored[t] = e
			continue
		}
		c.cons.reg.register(e)
		entries[t] = e
	}
	if err := c.followAll(ctx, entries); err != nil {
		c.abandon(ctx, entries, tasks)
		return nil, fmt.Errorf("reply queue: %w", err)
	}
	for i, m := range fr.Messages {
		err := c.publish(ctx, spans[i], fr.First[i].Call, m)
		if err == nil {
			ch := fr.Chains[i]
			last := ch.Tasks[len(ch.Tasks)-1]
			c.tel.awaitResult(spans[i], entries[last], last.Name)
			spans[i].End()
			ended++
		}
		if err != nil {
			var rest []*celery.Task
			for _, ch := range fr.Chains[i:] {
				rest = append(rest, ch.AllTasks()...)
			}
			c.abandon(ctx, entries, rest)
			if i > 0 {
				return nil, fmt.Errorf("%d of %d messages were sent before: %w", i, len(fr.Messages), err)
			}
			return nil, err
		}
	}
	for t, e := range ignored {
		entries[t] = e
	}
	return c.link(fr.Plan, entries), nil
}

// publish routes and publishes one task message, and its task-sent event,
// and records it on span.
func (c *Client) publish(ctx context.Context, span trace.Span, call *celery.Call, m *celery.Message) (err error) {
	r, err := c.route(ctx, call, m)
	if err != nil {
		return err
	}
	start := time.Now()
	defer func() {
		queue := call.Queue
		if r.Queue != nil {
			queue = r.Queue.Name
		}
		c.tel.published(ctx, span, m, r, queue, time.Since(start), err)
	}()
	pub := amqp091.Publishing{
		Headers:         amqpTable(m.Headers),
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp091.Persistent,
		Priority:        m.Priority,
		CorrelationId:   m.CorrelationID,
		ReplyTo:         m.ReplyTo,
		Expiration:      m.Expiration,
		Body:            m.Body,
	}
	if err := c.pub.Publish(ctx, broker.Message{Exchange: r.Exchange, Key: r.Key, Mandatory: true, Msg: pub}); err != nil {
		return err
	}
	c.publishSentEvent(ctx, m, r)
	return nil
}

// followAll follows every entry's reply queue, a few at a time, and
// returns once all are consumed.
func (c *Client) followAll(ctx context.Context, entries map[*celery.Task]*result.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	if len(entries) == 1 {
		for _, e := range entries {
			return c.cons.mode.follow(ctx, e)
		}
	}
	workers := min(8, len(entries))
	next := make(chan *result.Entry)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range next {
				if err := c.cons.mode.follow(ctx, e); err != nil {
					errs <- fmt.Errorf("task %s: %w", e.ID(), err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for _, e := range entries {
		select {
		case next <- e:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// abandon drops what was registered for tasks that will not be published:
// their entries, and the reply queues the broker holds for them, under
// ctx. A queue that cannot be deleted now expires by itself.
func (c *Client) abandon(ctx context.Context, entries map[*celery.Task]*result.Entry, tasks []*celery.Task) {
	for _, t := range tasks {
		if entries[t] == nil {
			continue
		}
		id := t.Call.TaskID
		if err := c.cons.forget(ctx, id); err != nil {
			c.log.Debug().Err(err).Str("task_id", id).Msg("reply queue of an unsent task not deleted; it expires by itself")
		}
	}
}

// link builds the results of a published plan: parents along each chain,
// a group's members.
func (c *Client) link(p *celery.Plan, entries map[*celery.Task]*result.Entry) *sent {
	newResult := func(t *celery.Task, parent *result.AsyncResult) *result.AsyncResult {
		opts := []result.Option{result.WithApp(c), result.WithTaskName(t.Name), result.WithParent(parent), result.WithIgnored(t.Call.Ignore)}
		if e := entries[t]; e != nil {
			opts = append(opts, result.WithEntry(e))
		}
		return result.New(t.Call.TaskID, c.back, opts...)
	}
	chain := func(ch *celery.Chain) (*result.AsyncResult, *result.GroupResult) {
		var prev *result.AsyncResult
		for _, t := range ch.Tasks {
			prev = newResult(t, prev)
		}
		if ch.Tail == nil {
			return prev, nil
		}
		members := make([]*result.AsyncResult, len(ch.Tail.Members))
		for i, m := range ch.Tail.Members {
			members[i] = newResult(m.Tasks[0], nil)
		}
		return prev, result.NewGroupResult(ch.Tail.ID, prev, members...)
	}
	if p.Group != nil {
		members := make([]*result.AsyncResult, len(p.Group.Members))
		for i, m := range p.Group.Members {
			members[i], _ = chain(m)
		}
		return &sent{group: result.NewGroupResult(p.Group.ID, nil, members...)}
	}
	last, g := chain(p.Chains[0])
	return &sent{last: last, group: g}
}
