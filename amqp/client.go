package amqp

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"
	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/result"
)

// ConnState is the state of one of the client's connections.
type ConnState = broker.State

// Connection states.
const (
	Connecting   = broker.Connecting
	Ready        = broker.Ready
	Reconnecting = broker.Reconnecting
	Closed       = broker.Closed
)

// ErrClosed is returned by a closed client, and rejects results that were
// pending when it closed.
var ErrClosed = result.ErrClosed

// ErrAccessRefused is wrapped when the broker refuses the credentials, the
// vhost or a permission.
var ErrAccessRefused = broker.ErrAccessRefused

// Client sends Celery tasks and receives their results. It is safe for
// concurrent use. Create it with Dial and Close it when done.
type Client struct {
	cfg  config
	log  zerolog.Logger
	url  string
	pub  *publisher
	cons *consumer

	pubConn *broker.Conn
	resConn *broker.Conn

	closeOnce sync.Once
	control   controlExt
	evx       eventsExt
}

// Dial connects to the broker at url (amqp:// or amqps://) and returns a
// Ready client. It retries network errors until ctx ends, and fails at once
// when the broker refuses the credentials, the vhost or a permission. ctx
// bounds only the connection, not the client's life.
func Dial(ctx context.Context, url string, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.mode == Shared && cfg.replyQueue == "" {
		cfg.replyQueue = cfg.replyPrefix + uuid.NewString()
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, url: url}
	c.log = cfg.logger.With().Str("component", "stalk").Logger()
	c.cons = newConsumer(&c.cfg, c.log)
	c.pub = &publisher{log: c.log, cfg: &c.cfg}
	base := broker.Config{URL: url, TLS: cfg.tls, Logger: c.log, Backoff: cfg.backoff, Heartbeat: cfg.heartbeat}

	rc := base
	rc.Name = cfg.name + "-results"
	resConn, err := broker.Start(rc, c.cons.hook)
	if err != nil {
		return nil, err
	}
	c.resConn = resConn
	c.cons.conn = resConn
	// A result in flight when the results connection drops may be lost:
	// a wait that ends before it arrives says so, whether or not the
	// broker is back by then.
	resConn.OnStateChange(func(s broker.State) {
		if s == broker.Reconnecting {
			c.cons.markDisrupted()
		}
	})
	c.cons.start()

	pc := base
	pc.Name = cfg.name + "-publish"
	pubConn, err := broker.Start(pc, c.pub.hook)
	if err != nil {
		c.resConn.Close()
		c.cons.closeAll()
		return nil, err
	}
	c.pubConn = pubConn
	c.pub.conn = pubConn

	for _, conn := range []*broker.Conn{resConn, pubConn} {
		if err := conn.WaitReady(ctx); err != nil {
			last := conn.LastError()
			c.Close()
			if last != nil {
				return nil, fmt.Errorf("stalk: connect to %s: %w", broker.Redact(url), last)
			}
			return nil, fmt.Errorf("stalk: connect to %s: %w", broker.Redact(url), err)
		}
	}
	if err := c.startEvents(ctx); err != nil {
		c.Close()
		return nil, err
	}
	c.log.Info().Str("broker", broker.Redact(url)).Str("reply_mode", cfg.mode.String()).Msg("connected")
	return c, nil
}

// Send publishes the task and returns its result once the broker has
// confirmed the message. The reply queue is declared and consumed before
// the task is published, so no state can be missed. While the broker is
// unreachable, Send waits until ctx ends. Bad arguments are reported before
// anything is published.
func (c *Client) Send(ctx context.Context, task string, opts ...SendOption) (*result.AsyncResult, error) {
	cfg := &sendConfig{}
	for _, o := range opts {
		if o != nil {
			o(cfg)
		}
	}
	if cfg.taskID == "" {
		cfg.taskID = uuid.NewString()
	}
	msg, err := buildTask(task, cfg, c.cfg.defaultQueue)
	if err != nil {
		return nil, err
	}
	if c.pubConn.State() == broker.Closed {
		return nil, ErrClosed
	}
	var entry *result.Entry
	if cfg.ignore {
		msg.pub.ReplyTo = ""
	} else {
		entry = result.NewEntry(cfg.taskID)
		entry.SetSendInfo(result.SendInfo{Name: task, Args: cfg.args, Kwargs: cfg.kwargs, Queue: msg.routingKey, Sent: time.Now()})
		c.cons.reg.register(entry)
		if err := c.cons.follow(ctx, entry); err != nil {
			c.cons.reg.drop(cfg.taskID)
			return nil, fmt.Errorf("stalk: send %s: reply queue: %w", task, err)
		}
		msg.pub.ReplyTo = c.cons.queueName(cfg.taskID)
	}
	if cfg.replyTo != nil {
		msg.pub.ReplyTo = *cfg.replyTo
	}
	if err := c.pub.publish(ctx, msg.exchange, msg.routingKey, msg.queue, msg.pub); err != nil {
		if entry != nil {
			c.cons.reg.drop(cfg.taskID)
			c.forgetLater(cfg.taskID)
		}
		return nil, fmt.Errorf("stalk: send %s: %w", task, err)
	}
	c.publishSentEvent(ctx, msg)
	ropts := []result.Option{result.WithApp(c), result.WithTaskName(task), result.WithIgnored(cfg.ignore)}
	if entry != nil {
		ropts = append(ropts, result.WithEntry(entry))
	}
	return result.New(cfg.taskID, c, ropts...), nil
}

// forgetLater deletes the reply queue of a task whose publish failed, off
// the caller's goroutine: Send must return at its ctx even while the broker
// is unreachable, and the deletion waits for the broker (until Close, or
// 30 s).
func (c *Client) forgetLater(id string) {
	if c.cfg.mode == Shared {
		return
	}
	c.cons.wg.Add(1)
	go func() {
		defer c.cons.wg.Done()
		ctx, cancel := context.WithTimeout(c.resConn.Life(), 30*time.Second)
		defer cancel()
		if err := c.cons.forget(ctx, id); err != nil && ctx.Err() == nil {
			c.log.Debug().Err(err).Str("task_id", id).Msg("reply queue of an unsent task not deleted; it expires by itself")
		}
	}()
}

// AsyncResult returns the result of task id, which may have been sent by
// another process. In per-task mode it attaches to the id's reply queue and
// reads its latest state; in shared mode it reads what arrives on this
// client's queue. It does not block: State is PENDING until a message
// arrives, and Get waits for it.
func (c *Client) AsyncResult(id string, opts ...result.Option) *result.AsyncResult {
	return result.New(id, c, append([]result.Option{result.WithApp(c)}, opts...)...)
}

// Attach implements result.Backend.
func (c *Client) Attach(id string) *result.Entry {
	e, follow := c.cons.reg.attach(id)
	if follow {
		c.seedFromEvents(e)
	}
	if follow && c.cfg.mode == PerTask {
		ctx := c.resConn.Life()
		c.cons.wg.Add(1)
		go func() {
			defer c.cons.wg.Done()
			if err := c.cons.follow(ctx, e); err != nil && ctx.Err() == nil {
				e.Fail(err)
			}
		}()
	}
	return e
}

// Exists implements result.Backend: whether a result for id is known here
// or, in per-task mode, stored in its reply queue.
func (c *Client) Exists(ctx context.Context, id string) (bool, error) {
	return c.cons.exists(ctx, id)
}

// Forget implements result.Backend: it drops id's local state, fails
// waiters with ErrForgotten and, in per-task mode, deletes its reply queue.
func (c *Client) Forget(ctx context.Context, id string) error {
	return c.cons.forget(ctx, id)
}

// Release implements result.Releaser: the client stops following id.
// Waits on it end with an error wrapping result.ErrReleased; in per-task
// mode its reply-queue consumer is cancelled, and the queue, with any
// result stored in it, stays until it expires. A result that arrives
// later in shared mode is kept in the result cache like any other. A
// later AsyncResult(id) follows it again. Releasing a task that is not
// pending does nothing.
func (c *Client) Release(id string) { c.cons.release(id) }

// ReplyMode returns the client's reply mode.
func (c *Client) ReplyMode() ReplyMode { return c.cfg.mode }

// ReplyQueue returns the reply queue of task id: the shared queue, or the
// task's own queue in per-task mode.
func (c *Client) ReplyQueue(id string) string { return c.cons.queueName(id) }

// State returns the state of the results connection, the one results
// depend on.
func (c *Client) State() ConnState { return c.resConn.State() }

// OnStateChange registers fn for state changes of both connections; which
// is the publishing connection tells which.
func (c *Client) OnStateChange(fn func(publishing bool, s ConnState)) {
	c.resConn.OnStateChange(func(s ConnState) { fn(false, s) })
	c.pubConn.OnStateChange(func(s ConnState) { fn(true, s) })
}

// Stats is a snapshot of the client's counters.
type Stats struct {
	Pending    int   // results somebody asked for that are not ready
	Cached     int   // ready or unclaimed results kept for later readers
	Received   int64 // result messages received
	Malformed  int64 // messages dropped as undecodable
	Orphans    int64 // messages for ids nobody had asked for
	Duplicates int64 // final states after the first
	Stale      int64 // unready states after the final one
	Evicted    int64 // cached results dropped by the size or age bound
	Deleted    int64 // reply queues deleted under the client
	Reconnects int64 // reconnections of the results connection
	Channels   int   // AMQP channels the client keeps open (fixed)
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	p, cached := c.cons.reg.counts()
	s := &c.cons.stats
	return Stats{
		Pending: p, Cached: cached,
		Received: s.received.Load(), Malformed: s.malformed.Load(), Orphans: s.orphans.Load(),
		Duplicates: s.duplicates.Load(), Stale: s.stale.Load(), Evicted: s.evicted.Load(),
		Deleted: s.deleted.Load(), Reconnects: s.reconnects.Load(),
		Channels: 1 + c.cons.channels(),
	}
}

// Close closes the connections, rejects every pending result with
// ErrClosed and waits for the client's goroutines to exit. It is
// idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closeControl()
		c.closeEvents()
		if c.pubConn != nil {
			c.pubConn.Close()
		}
		c.resConn.Close()
		c.cons.closeAll()
	})
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
