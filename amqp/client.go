package amqp

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
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

// Client sends Celery tasks and receives their results. It is safe for
// concurrent use. Create it with Dial and Close it when done.
type Client struct {
	cfg     config
	log     zerolog.Logger
	url     string
	pubConn *broker.Conn
	resConn *broker.Conn
	pub     *broker.Publisher
	cons    *consumer
	back    *backend
	planner celery.Planner
	tel     *telemetry

	closeOnce   sync.Once
	delayedWarn sync.Once
	control     controlExt
	evx         eventsExt
}

// Dial connects to the broker at url (amqp:// or amqps://) and returns a
// Ready client. It retries network errors until ctx ends, and fails at once
// when the broker refuses the credentials, the vhost or a permission, or
// when the options are invalid or conflict (ErrInvalidOption). ctx bounds
// only the connection, not the client's life. Dial declares no task queue:
// queues are declared, if need be, by the first task sent to them.
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
	if len(cfg.brokers) > 0 {
		url = strings.Join(append([]string{url}, cfg.brokers...), ";")
	}
	urls, err := broker.ParseURLs(url)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, url: url}
	c.log = cfg.logger.With().Str("component", "stalk").Logger()
	c.planner = celery.Planner{DefaultQueue: cfg.topo.DefaultQueue, NewID: uuid.NewString}
	c.cons = newConsumer(&c.cfg, c.log)
	c.cons.multiNode = len(urls) > 1
	c.back = &backend{c: c}
	base := broker.Config{URL: url, Failover: cfg.failover, TLS: cfg.tls, Logger: c.log, Backoff: cfg.backoff, Heartbeat: cfg.heartbeat}

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
	pubConn, err := broker.Start(pc)
	if err != nil {
		c.resConn.Close()
		c.cons.closeAll()
		return nil, err
	}
	c.pubConn = pubConn
	c.pub = broker.NewPublisher(pubConn, c.log)
	c.tel = newTelemetry(c)
	c.cons.tel = c.tel

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
// the task is published, so no state can be missed. The task is published
// mandatory: one that routes to no queue fails with ErrUnroutable instead
// of being dropped. While the broker is unreachable, Send waits until ctx
// ends. Bad arguments are reported before anything is published.
func (c *Client) Send(ctx context.Context, task string, opts ...SendOption) (*result.AsyncResult, error) {
	p, err := c.planner.Plan(&celery.Node{Kind: celery.TaskNode, Name: task, Opts: opts}, nil, true)
	if err != nil {
		return nil, fmt.Errorf("stalk: send %s: %w", task, trimPrefix(err))
	}
	s, err := c.dispatch(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("stalk: send %s: %w", task, trimPrefix(err))
	}
	return s.last, nil
}

// AsyncResult returns the result of task id, which may have been sent by
// another process. In per-task mode it attaches to the id's reply queue and
// reads its latest state; in shared mode it reads what arrives on this
// client's queue. It does not block: State is PENDING until a message
// arrives, and Get waits for it.
func (c *Client) AsyncResult(id string, opts ...result.Option) *result.AsyncResult {
	return result.New(id, c.back, append([]result.Option{result.WithApp(c)}, opts...)...)
}

// FromTuple rebuilds the results a Celery result tuple describes
// (result.FromTuple, Celery's result_from_tuple), read through this
// client: an *result.AsyncResult with its parents, or a *result.GroupResult.
func (c *Client) FromTuple(v any) (result.Result, error) {
	return result.FromTuple(v, c.back, result.WithApp(c))
}

// AsyncResultFromTuple is FromTuple for a task's tuple.
func (c *Client) AsyncResultFromTuple(v any) (*result.AsyncResult, error) {
	return result.AsyncFromTuple(v, c.back, result.WithApp(c))
}

// GroupResultFromTuple is FromTuple for a group's tuple.
func (c *Client) GroupResultFromTuple(v any) (*result.GroupResult, error) {
	return result.GroupFromTuple(v, c.back, result.WithApp(c))
}

// ReplyMode returns the client's reply mode.
func (c *Client) ReplyMode() ReplyMode { return c.cfg.mode }

// ReplyQueue returns the reply queue of task id: the shared queue, or the
// task's own queue in per-task mode.
func (c *Client) ReplyQueue(id string) string { return c.cons.mode.queueFor(id) }

// State returns the state of the results connection, the one results
// depend on.
func (c *Client) State() ConnState { return c.resConn.State() }

// ConnStatus is one connection's state and the broker node it is on (or
// was last on), its URL with the password redacted.
type ConnStatus struct {
	State  ConnState
	Broker string
}

// Status returns the state of the results and the publishing connections,
// and the node each is on.
func (c *Client) Status() (results, publishing ConnStatus) {
	return ConnStatus{c.resConn.State(), c.resConn.URL()}, ConnStatus{c.pubConn.State(), c.pubConn.URL()}
}

// OnStateChange registers fn for state changes of both connections;
// publishing tells which.
func (c *Client) OnStateChange(fn func(publishing bool, s ConnState)) {
	c.resConn.OnStateChange(func(s ConnState) { fn(false, s) })
	c.pubConn.OnStateChange(func(s ConnState) { fn(true, s) })
}

// Stats is a snapshot of the client's counters.
type Stats struct {
	Pending         int   // results somebody asked for that are not ready
	Cached          int   // ready or unclaimed results kept for later readers
	Received        int64 // result messages received
	Malformed       int64 // messages dropped as undecodable
	Orphans         int64 // messages for ids nobody had asked for
	Duplicates      int64 // final states after the first
	Stale           int64 // unready states after the final one
	Evicted         int64 // cached results dropped by the size or age bound
	EvictedUnread   int64 // of Evicted, results for ids nobody ever asked for
	Deleted         int64 // reply queues deleted under the client
	Reconnects      int64 // reconnections of the results connection
	DelayedFallback int64 // delayed tasks sent as worker-held ETAs because native delayed delivery was missing
	Unreachable     int64 // times a reply queue was found on a cluster node that is down
	Channels        int   // AMQP channels the client keeps open (fixed)
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	p, cached := c.cons.reg.counts()
	s := &c.cons.stats
	return Stats{
		Pending: p, Cached: cached,
		Received: s.received.Load(), Malformed: s.malformed.Load(), Orphans: s.orphans.Load(),
		Duplicates: s.duplicates.Load(), Stale: s.stale.Load(), Evicted: s.evicted.Load(),
		EvictedUnread: s.evictedUnread.Load(), Deleted: s.deleted.Load(), Reconnects: s.reconnects.Load(),
		DelayedFallback: s.delayedFallback.Load(), Unreachable: s.unreachable.Load(),
		Channels: 1 + c.cons.mode.channels(),
	}
}

// Close closes the connections, rejects every pending result with
// ErrClosed and waits for the client's goroutines to exit. It is
// idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closeControl()
		c.closeEvents()
		c.tel.close()
		if c.pubConn != nil {
			c.pubConn.Close()
			c.pub.Close()
		}
		c.resConn.Close()
		c.cons.closeAll()
	})
	return nil
}

// backend is the client as result.Backend: what an AsyncResult reads
// through. It is not part of the Client's API.
type backend struct{ c *Client }

var (
	_ result.Backend  = (*backend)(nil)
	_ result.Releaser = (*backend)(nil)
	_ result.Revoker  = (*backend)(nil)
)

func (b *backend) Attach(id string) *result.Entry {
	c := b.c
	e, follow := c.cons.reg.attach(id)
	if !follow {
		return e
	}
	c.seedFromEvents(e)
	ctx := c.resConn.Life()
	c.cons.wg.Add(1)
	go func() {
		defer c.cons.wg.Done()
		if err := c.cons.mode.follow(ctx, e); err != nil && ctx.Err() == nil {
			e.Fail(err)
		}
	}()
	return e
}

func (b *backend) Exists(ctx context.Context, id string) (bool, error) {
	return b.c.cons.exists(ctx, id)
}

func (b *backend) Forget(ctx context.Context, id string) error { return b.c.cons.forget(ctx, id) }

func (b *backend) Release(id string) { b.c.cons.release(id) }

func (b *backend) Revoke(ctx context.Context, ids []string, opts ...result.ControlOption) ([]result.ControlReply, error) {
	return b.c.tel.revoke(ctx, "revoke", len(ids), func(ctx context.Context) ([]result.ControlReply, error) {
		ctrl, err := b.c.Control(ctx)
		if err != nil {
			return nil, err
		}
		return ctrl.Revoke(ctx, ids, opts...)
	})
}

func (b *backend) RevokeByStampedHeaders(ctx context.Context, headers map[string][]string, opts ...result.ControlOption) ([]result.ControlReply, error) {
	return b.c.tel.revoke(ctx, "revoke_by_stamped_headers", len(headers), func(ctx context.Context) ([]result.ControlReply, error) {
		ctrl, err := b.c.Control(ctx)
		if err != nil {
			return nil, err
		}
		return ctrl.RevokeByStampedHeaders(ctx, headers, opts...)
	})
}
