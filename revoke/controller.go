package revoke

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/internal/broker"
)

// Controller sends Celery remote-control commands over the celery.pidbox
// fanout exchange and collects the workers' replies.
//
// Goroutines and ownership: a Controller runs one goroutine, the router.
// It owns the consumer channel of the Controller's reply queue, reads every
// reply, and hands it to the command waiting for its ticket. Publishing
// goes through stalk's one publisher (publisher confirms, mandatory). The reply queue is set up lazily, by the first command that wants
// replies, and again by a broker hook on every reconnect, before the
// connection reports Ready; so a command that publishes after a reconnect
// always has a queue to be answered on.
//
// A Controller is safe for concurrent use.
type Controller struct {
	conn  *broker.Conn
	owned bool // Close closes conn
	log   zerolog.Logger
	oid   string // routing key of our replies; our queue is oid + ".reply.celery.pidbox"
	queue string

	life   context.Context // ends at Close, or when conn is closed
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	attach chan *consumer // setup → router

	hookMu sync.Mutex
	hooked bool

	setupMu sync.Mutex // serialises reply-queue setup

	pub *broker.Publisher // confirms, mandatory: a broadcast no worker hears is an error

	mu         sync.Mutex
	clock      int64 // Lamport clock
	cons       *consumer
	collectors map[string]*collector
	unclaimed  map[string]*stash
	dropped    uint64 // replies dropped: undecodable, refused, expired or evicted
}

// consumer is one basic.consume of the reply queue, on one connection.
type consumer struct {
	conn       *amqp091.Connection
	ch         *amqp091.Channel
	deliveries <-chan amqp091.Delivery
	dead       chan struct{}
	deadOnce   sync.Once
}

func (c *consumer) kill() { c.deadOnce.Do(func() { close(c.dead) }) }

func (c *consumer) alive(conn *amqp091.Connection) bool {
	if c == nil || c.conn != conn {
		return false
	}
	select {
	case <-c.dead:
		return false
	default:
		return !c.ch.IsClosed()
	}
}

// collector receives the replies for one ticket.
type collector struct {
	mu      sync.Mutex
	replies []Reply
	notify  chan struct{} // capacity 1: "there is something new"
}

func (col *collector) add(rs []Reply) {
	col.mu.Lock()
	col.replies = append(col.replies, rs...)
	col.mu.Unlock()
	select {
	case col.notify <- struct{}{}:
	default:
	}
}

func (col *collector) take() []Reply {
	col.mu.Lock()
	defer col.mu.Unlock()
	rs := col.replies
	col.replies = nil
	return rs
}

// stash keeps replies for a ticket nobody is collecting, as Celery does.
// Our tickets are fresh per command, so these are late replies to a
// collection that already ended; they are kept briefly and bounded.
type stash struct {
	replies []Reply
	at      time.Time
}

const (
	maxUnclaimed = 256             // tickets kept; the oldest is evicted beyond it
	unclaimedTTL = 5 * time.Minute // as the reply queue's x-message-ttl
)

func newController(conn *broker.Conn, owned bool, logger zerolog.Logger) *Controller {
	oid := uuid.NewString()
	c := &Controller{
		conn:       conn,
		owned:      owned,
		log:        logger.With().Str("component", "revoke").Str("reply_oid", oid).Logger(),
		oid:        oid,
		queue:      oid + replyQueueTail,
		attach:     make(chan *consumer),
		pub:        broker.NewPublisher(conn, logger),
		collectors: make(map[string]*collector),
		unclaimed:  make(map[string]*stash),
	}
	c.life, c.cancel = context.WithCancel(conn.Life())
	c.wg.Add(1)
	go c.route()
	return c
}

// DialOption configures Dial.
type DialOption func(*dialConfig)

type dialConfig struct {
	logger   zerolog.Logger
	name     string
	tls      *tls.Config
	backoff  broker.Backoff
	failover string
}

// WithLogger sets the logger. Default: zerolog.Nop().
func WithLogger(l zerolog.Logger) DialOption { return func(c *dialConfig) { c.logger = l } }

// WithConnectionName names the AMQP connection, as rabbitmqctl
// list_connections shows it. Default: "stalk-revoke".
func WithConnectionName(name string) DialOption { return func(c *dialConfig) { c.name = name } }

// WithTLS sets the TLS configuration for amqps:// URLs. Default: the
// system roots.
func WithTLS(cfg *tls.Config) DialOption { return func(c *dialConfig) { c.tls = cfg } }

// WithBackoff sets the redial delay function. Default: capped exponential
// backoff with jitter, 100 ms doubling to 5 s.
func WithBackoff(b func(attempt int) time.Duration) DialOption {
	return func(c *dialConfig) { c.backoff = b }
}

// WithFailover sets the order in which a ";"-separated list of broker URLs
// is tried, by Celery's broker_failover_strategy names: "round-robin" (the
// default) or "shuffle". Dial fails on another name.
func WithFailover(strategy string) DialOption { return func(c *dialConfig) { c.failover = strategy } }

// Dial connects to the broker at url and returns a Controller that owns
// its connection: Close closes it. The connection redials with backoff
// when it drops. ctx bounds only the first connection.
func Dial(ctx context.Context, url string, opts ...DialOption) (*Controller, error) {
	cfg := dialConfig{logger: zerolog.Nop(), name: "stalk-revoke"}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	failover, err := broker.ParseFailover(cfg.failover)
	if err != nil {
		return nil, err
	}
	conn, err := broker.Dial(ctx, broker.Config{URL: url, Failover: failover, Name: cfg.name, TLS: cfg.tls, Logger: cfg.logger, Backoff: cfg.backoff})
	if err != nil {
		return nil, fmt.Errorf("stalk: revoke: dial %s: %w", broker.Redact(url), err)
	}
	return newController(conn, true, cfg.logger), nil
}

// Close stops the Controller. Commands in flight return ErrClosed. It
// closes the connection only if Dial made it. Close is idempotent, and
// returns once the Controller's goroutine has exited.
func (c *Controller) Close() error {
	c.once.Do(func() {
		c.cancel()
		c.wg.Wait()
		// Publishers hold the turn only briefly: their waits end with
		// c.life, which is cancelled above.
		if c.owned {
			_ = c.conn.Close()
		}
		c.pub.Close()
	})
	c.wg.Wait()
	return nil
}

// Dropped returns how many replies the Controller has dropped: refused
// content types, undecodable bodies, expired replies, and late replies
// evicted from the unclaimed stash.
func (c *Controller) Dropped() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// tick advances the Lamport clock for a message we send.
func (c *Controller) tick() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock++
	return c.clock
}

// observe merges a clock value we received.
func (c *Controller) observe(v int64) {
	c.mu.Lock()
	if v > c.clock {
		c.clock = v
	}
	c.clock++
	c.mu.Unlock()
}

// ---- reply queue: setup and the router -------------------------------------

// ensureConsumer makes sure the reply queue is declared and consumed on
// the current connection, and registers the hook that redoes it on every
// reconnect.
func (c *Controller) ensureConsumer(ctx context.Context) error {
	c.hookMu.Lock()
	if !c.hooked {
		c.hooked = true
		c.hookMu.Unlock()
		// AddHook runs the hook at once when the connection is Ready. Its
		// error is not final: the check below retries.
		if err := c.conn.AddHook(ctx, c.hook); err != nil {
			c.log.Debug().Err(err).Msg("reply queue setup failed; retrying")
		}
	} else {
		c.hookMu.Unlock()
	}
	conn, err := c.conn.Connection(ctx)
	if err != nil {
		return c.closedOr(err)
	}
	return c.setup(ctx, conn)
}

// hook redeclares and re-consumes the reply queue on a new connection. It
// never fails the connection, which may be shared with the amqp client: a
// failure is logged, and the next command that wants replies retries.
func (c *Controller) hook(ctx context.Context, conn *amqp091.Connection) error {
	if c.life.Err() != nil {
		return nil
	}
	if err := c.setup(ctx, conn); err != nil && c.life.Err() == nil {
		c.log.Warn().Err(err).Str("queue", c.queueName()).Msg("reply queue setup failed")
	}
	return nil
}

// setup declares the reply exchange and our queue on conn, starts
// consuming it, and hands the deliveries to the router.
//
// The queue is durable, not auto-delete, with x-expires: it outlives a
// dropped connection by 10 s, so replies that arrive while we redial wait
// for us, and RabbitMQ 4.3+ accepts it (it refuses transient queues that
// are not exclusive). Its name is stable while its node lives: on a
// cluster, when the node it lives on is down, the Controller takes a new
// name (a new oid), since the old queue cannot be used until that node is
// back; replies to commands sent before are lost with it.
func (c *Controller) setup(ctx context.Context, conn *amqp091.Connection) error {
	c.setupMu.Lock()
	defer c.setupMu.Unlock()
	err := c.setupLocked(ctx, conn)
	if node, down := broker.HomeNodeDown(err); down {
		old := c.queueName()
		c.newOID()
		c.log.Warn().Str("queue", old).Str("node", node).Str("new_queue", c.queueName()).
			Msg("reply queue unreachable: its node is down; using a new one")
		err = c.setupLocked(ctx, conn)
	}
	return err
}

// newOID gives the Controller a new reply routing key and queue.
func (c *Controller) newOID() {
	oid := uuid.NewString()
	c.mu.Lock()
	c.oid, c.queue = oid, oid+replyQueueTail
	c.mu.Unlock()
}

// queueName and replyKey are the current reply queue and routing key.
func (c *Controller) queueName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queue
}

func (c *Controller) replyKey() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.oid
}

func (c *Controller) setupLocked(ctx context.Context, conn *amqp091.Connection) error {
	queue, oid := c.queueName(), c.replyKey()
	c.mu.Lock()
	ok := c.cons.alive(conn)
	c.mu.Unlock()
	if ok {
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("stalk: revoke: open reply channel: %w", err)
	}
	fail := func(what string, err error) error {
		_ = ch.Close()
		return fmt.Errorf("stalk: revoke: %s: %w", what, err)
	}
	if err := ch.ExchangeDeclare(replyExchange, amqp091.ExchangeDirect, false, false, false, false, nil); err != nil {
		return fail("declare exchange "+replyExchange, err)
	}
	args := amqp091.Table{"x-expires": int32(replyQueueExpires), "x-message-ttl": int32(replyMessageTTL)}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		return fail("declare queue "+queue, err)
	}
	if err := ch.QueueBind(queue, oid, replyExchange, false, nil); err != nil {
		return fail("bind queue "+queue, err)
	}
	// Auto-ack, as Celery consumes replies: the router only decodes and
	// hands over, so it never lets the prefetch grow.
	deliveries, err := ch.Consume(queue, "stalk-revoke-"+oid, true, false, false, false, nil)
	if err != nil {
		return fail("consume "+queue, err)
	}
	cons := &consumer{conn: conn, ch: ch, deliveries: deliveries, dead: make(chan struct{})}
	// Recorded now, so that a command racing the router's pick-up does not
	// set up a second consumer. If the hand-over fails the channel is
	// closed, and alive reports false.
	c.mu.Lock()
	c.cons = cons
	c.mu.Unlock()
	select {
	case c.attach <- cons:
	case <-c.life.Done():
		_ = ch.Close()
		return ErrClosed
	case <-ctx.Done():
		_ = ch.Close()
		return fmt.Errorf("stalk: revoke: reply queue setup: %w", ctx.Err())
	}
	c.log.Debug().Str("queue", queue).Msg("consuming replies")
	return nil
}

// route is the router goroutine: it reads every reply and hands it to the
// collector waiting for its ticket. It never runs user code and never
// blocks on a collector.
func (c *Controller) route() {
	defer c.wg.Done()
	var cur *consumer
	var deliveries <-chan amqp091.Delivery
	defer func() {
		if cur != nil {
			cur.kill()
			_ = cur.ch.Close()
		}
	}()
	for {
		select {
		case <-c.life.Done():
			return
		case n := <-c.attach:
			if cur != nil {
				cur.kill()
				_ = cur.ch.Close()
			}
			cur, deliveries = n, n.deliveries
			c.mu.Lock()
			c.cons = n
			c.mu.Unlock()
		case d, ok := <-deliveries:
			if ok {
				c.dispatch(d)
				continue
			}
			// The channel closed or the broker cancelled us (the queue
			// was deleted). If the connection is still up, nothing will
			// call the hook: set up again now.
			deliveries = nil
			cur.kill()
			if !cur.conn.IsClosed() && c.life.Err() == nil {
				c.log.Debug().Str("queue", c.queueName()).Msg("reply consumer stopped; setting it up again")
				stopped := cur
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					ctx, cancel := context.WithTimeout(c.life, 30*time.Second)
					defer cancel()
					err := c.ensureConsumer(ctx)
					switch {
					case err == nil, c.life.Err() != nil:
					case stopped.conn.IsClosed():
						// The connection was going down; the hook sets up
						// again on the next one.
						c.log.Debug().Err(err).Msg("reply queue setup failed")
					default:
						c.log.Warn().Err(err).Msg("reply queue setup failed")
					}
				}()
			}
		}
	}
}

// dispatch decodes one reply and hands it over.
func (c *Controller) dispatch(d amqp091.Delivery) {
	h := readReplyHeaders(d.Headers)
	if h.clock > 0 {
		c.observe(h.clock)
	}
	log := c.log.With().Str("ticket", h.ticket).Logger()
	if err := checkReply(d); err != nil {
		c.drop()
		log.Warn().Err(err).Msg("control reply refused")
		return
	}
	if h.expires > 0 && float64(time.Now().UnixNano())/1e9 > h.expires {
		c.drop()
		log.Debug().Msg("control reply expired; dropped")
		return
	}
	replies, err := decodeReply(d.Body)
	if err != nil {
		c.drop()
		log.Warn().Err(err).Msg("control reply dropped")
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if col := c.collectors[h.ticket]; col != nil {
		col.add(replies)
		return
	}
	c.stashLocked(h.ticket, replies)
	log.Debug().Int("replies", len(replies)).Msg("reply for no waiting command; stashed")
}

func (c *Controller) drop() {
	c.mu.Lock()
	c.dropped++
	c.mu.Unlock()
}

// checkReply refuses what we will not decode.
func checkReply(d amqp091.Delivery) error {
	if d.ContentType != "" && d.ContentType != contentType {
		return fmt.Errorf("%w: content type %q (only %s is accepted)", errBadReply, d.ContentType, contentType)
	}
	switch d.ContentEncoding {
	case "", contentEncoding, "utf8", "UTF-8":
	default:
		return fmt.Errorf("%w: content encoding %q", errBadReply, d.ContentEncoding)
	}
	if _, compressed := d.Headers["compression"]; compressed {
		return fmt.Errorf("%w: compressed body", errBadReply)
	}
	if len(d.Body) > maxReplyBody {
		return fmt.Errorf("%w: body of %d bytes is over the %d-byte limit", errBadReply, len(d.Body), maxReplyBody)
	}
	return nil
}

func (c *Controller) stashLocked(ticket string, rs []Reply) {
	now := time.Now()
	if s := c.unclaimed[ticket]; s != nil {
		s.replies = append(s.replies, rs...)
		return
	}
	for t, s := range c.unclaimed {
		if now.Sub(s.at) > unclaimedTTL {
			c.dropped += uint64(len(s.replies))
			delete(c.unclaimed, t)
		}
	}
	for len(c.unclaimed) >= maxUnclaimed {
		var oldest string
		var at time.Time
		for t, s := range c.unclaimed {
			if oldest == "" || s.at.Before(at) {
				oldest, at = t, s.at
			}
		}
		c.dropped += uint64(len(c.unclaimed[oldest].replies))
		delete(c.unclaimed, oldest)
	}
	c.unclaimed[ticket] = &stash{replies: rs, at: now}
}

// register starts collecting for ticket, claiming anything stashed for it.
func (c *Controller) register(ticket string) *collector {
	col := &collector{notify: make(chan struct{}, 1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.collectors[ticket] = col
	if s := c.unclaimed[ticket]; s != nil {
		delete(c.unclaimed, ticket)
		col.add(s.replies)
	}
	return col
}

func (c *Controller) unregister(ticket string) {
	c.mu.Lock()
	delete(c.collectors, ticket)
	c.mu.Unlock()
}

// ---- publishing --------------------------------------------------------------

// publish broadcasts body on celery.pidbox and waits for the broker's
// confirm; the publisher sends it again if its channel dies first (control
// commands are idempotent). It is published mandatory: when no worker's
// control queue is bound to celery.pidbox, no worker is online to hear it,
// and the error wraps ErrUnroutable.
func (c *Controller) publish(ctx context.Context, body []byte, timeout time.Duration) error {
	if c.life.Err() != nil {
		return ErrClosed
	}
	err := c.pub.Ensure(ctx, "exchange\x00"+controlExchange, func(conn *amqp091.Connection) error {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		// Celery's flags exactly: a different durable flag is a 406.
		if err := ch.ExchangeDeclare(controlExchange, amqp091.ExchangeFanout, false, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s: %w", controlExchange, err)
		}
		return nil
	})
	if err == nil {
		err = c.pub.Publish(ctx, broker.Message{Exchange: controlExchange, Mandatory: true, Msg: amqp091.Publishing{
			ContentType:     contentType,
			ContentEncoding: contentEncoding,
			DeliveryMode:    amqp091.Persistent,
			Priority:        0,
			Headers:         requestHeaders(c.tick(), time.Now(), timeout),
			Body:            body,
		}})
	}
	if errors.Is(err, broker.ErrUnroutable) {
		return fmt.Errorf("%w: no worker is online to hear it (celery.pidbox routes to no queue): %w", ErrNoWorker, err)
	}
	return c.closedOr(err)
}

// closedOr returns ErrClosed once the Controller is closed, else err.
func (c *Controller) closedOr(err error) error {
	if c.life.Err() != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}
