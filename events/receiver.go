package events

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
	"github.com/stalk-dev/stalk/result"
)

// ErrClosed is returned by a Receiver's methods after Close. It is
// result.ErrClosed, the one ErrClosed of every stalk package.
var ErrClosed = result.ErrClosed

// Exchange is the name of Celery's event exchange. It is a durable topic
// exchange; declaring it with any other flags makes RabbitMQ close the
// channel (406 PRECONDITION_FAILED).
const Exchange = "celeryev"

// DeclareExchange declares the celeryev exchange with Celery's exact flags:
// topic, durable, not auto-deleted.
func DeclareExchange(ch *amqp091.Channel) error {
	if err := ch.ExchangeDeclare(Exchange, amqp091.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("events: declare exchange %s: %w", Exchange, err)
	}
	return nil
}

// Receiver consumes Celery's event stream from a queue of its own,
// celeryev.<uuid>, bound to the celeryev exchange, and hands the decoded
// events to its subscriptions.
//
// One goroutine per connection reads the queue, decodes each body, offers
// each event to every subscription's bounded buffer without ever blocking
// (handlers run on the subscriptions' own goroutines) and acknowledges it.
// Until the first Subscribe it reads nothing: at most a prefetch window of
// events (4,096) waits in this process and the rest wait in the queue, which
// the broker bounds too: events older than MessageTTL are dropped there.
//
// The queue is declared and consumed on every (re)connect of the
// underlying broker.Conn, so a Receiver survives connection loss; events
// published while it is disconnected are lost unless the queue is Durable
// (and then only those younger than MessageTTL survive).
type Receiver struct {
	conn  *broker.Conn
	pub   *broker.Publisher
	owned bool
	cfg   config
	log   zerolog.Logger
	tag   string

	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool
	ch     *amqp091.Channel // current consuming channel
	queue  string           // current queue name
	wg     sync.WaitGroup   // consume loops and subscription goroutines

	closeOnce sync.Once
	done      chan struct{}

	// subscribed is closed by the first Subscribe: events that arrive
	// before it wait for it instead of being offered to nobody, so that a
	// Durable queue's backlog reaches the first subscription.
	subscribed chan struct{}
	subOnce    sync.Once

	received  atomic.Uint64
	decoded   atomic.Uint64
	malformed atomic.Uint64
	refused   atomic.Uint64
	dropped   atomic.Uint64
	consumes  atomic.Uint64
	started   atomic.Bool // the first setup succeeded
}

// Stats are a Receiver's counters since it was created.
type Stats struct {
	Received  uint64 // message bodies delivered by the broker
	Decoded   uint64 // events decoded from them (a task.multi body holds several)
	Malformed uint64 // bodies, or array elements, that were not valid events, including Refused
	Refused   uint64 // bodies with a non-JSON content type or encoding, or too large
	Dropped   uint64 // events dropped by subscriptions whose buffers were full, summed over subscriptions
	Consumes  uint64 // times the queue was (re)consumed: 1 + reconnects
}

// prefetch bounds the events delivered to a receiver and not yet handled.
const prefetch = 4096

// Dial connects to url and returns a Receiver that owns the connection:
// Close closes it. ctx bounds only the first connection and the queue
// declaration, not the Receiver's lifetime.
func Dial(ctx context.Context, url string, opts ...Option) (*Receiver, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	failover, err := broker.ParseFailover(cfg.failover)
	if err != nil {
		return nil, err
	}
	conn, err := broker.Dial(ctx, broker.Config{URL: url, Failover: failover, Name: cfg.connName, Logger: cfg.log, TLS: cfg.tls, Backoff: cfg.backoff})
	if err != nil {
		return nil, fmt.Errorf("events: dial: %w", err)
	}
	r, err := newReceiver(ctx, conn, true, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return r, nil
}

func newReceiver(ctx context.Context, conn *broker.Conn, owned bool, cfg config) (*Receiver, error) {
	r := &Receiver{
		conn:  conn,
		pub:   broker.NewPublisher(conn, cfg.log),
		owned: owned,
		cfg:   cfg,
		tag:   "stalk-events-" + uuid.NewString(),
		subs:  map[*Subscription]struct{}{},
		done:  make(chan struct{}),

		subscribed: make(chan struct{}),
	}
	r.queue = r.newQueueName()
	r.log = cfg.log.With().Str("component", "events").Logger()
	if err := conn.WaitReady(ctx); err != nil {
		return nil, fmt.Errorf("events: wait for connection: %w", err)
	}
	// AddHook runs the hook now, on the current connection, and again on
	// every reconnect.
	if err := conn.AddHook(ctx, r.hook); err != nil {
		r.shutdown()
		return nil, err
	}
	return r, nil
}

func (r *Receiver) newQueueName() string {
	if r.cfg.queue != "" {
		return r.cfg.queue
	}
	return r.cfg.prefix + "." + uuid.NewString()
}

// Queue returns the name of the Receiver's event queue. An exclusive
// queue with a generated name is named anew on every connection (the old
// one is deleted with its connection), so the name can change.
func (r *Receiver) Queue() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.queue
}

// hook declares the topology and starts consuming on conn. It runs on the
// broker supervisor's goroutine for every new connection. Until the first
// setup succeeds its error is returned (NewReceiver reports it); after
// that, a failure is logged and retried in the background rather than
// returned, since returning it would tear down a connection that other
// components share.
func (r *Receiver) hook(ctx context.Context, conn *amqp091.Connection) error {
	r.mu.Lock()
	closed := r.closed
	if !r.cfg.durable && r.started.Load() {
		r.queue = r.newQueueName()
	}
	r.mu.Unlock()
	if closed {
		return nil
	}
	err := r.setup(conn)
	if err == nil {
		r.started.Store(true)
		return nil
	}
	if !r.started.Load() {
		return err
	}
	r.log.Warn().Err(err).Msg("event queue setup failed; retrying")
	r.retrySetup(conn)
	return nil
}

func (r *Receiver) setup(conn *amqp091.Connection) error {
	r.mu.Lock()
	queue := r.queue
	r.mu.Unlock()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("events: open channel: %w", err)
	}
	fail := func(err error) error {
		_ = ch.Close()
		return err
	}
	if err := DeclareExchange(ch); err != nil {
		return fail(err)
	}
	args := amqp091.Table{
		"x-message-ttl": int32(r.cfg.ttl / time.Millisecond),
		"x-expires":     int32(r.cfg.expires / time.Millisecond),
	}
	durable, exclusive := r.cfg.durable, !r.cfg.durable
	if _, err := ch.QueueDeclare(queue, durable, false, exclusive, false, args); err != nil {
		return fail(fmt.Errorf("events: declare queue %s: %w", queue, err))
	}
	for _, p := range r.cfg.patterns {
		if err := ch.QueueBind(queue, p, Exchange, false, nil); err != nil {
			return fail(fmt.Errorf("events: bind queue %s to %s with %q: %w", queue, Exchange, p, err))
		}
	}
	// Manual acknowledgements with a prefetch window: until the first
	// Subscribe, at most prefetch events wait in this process and the rest
	// stay in the queue (bounded there by MessageTTL); and events that were
	// delivered but not handled when a connection drops are delivered again.
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return fail(fmt.Errorf("events: set prefetch: %w", err))
	}
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	deliveries, err := ch.Consume(queue, r.tag, false, exclusive, false, false, nil)
	if err != nil {
		return fail(fmt.Errorf("events: consume %s: %w", queue, err))
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return fail(nil)
	}
	r.ch = ch
	r.wg.Add(1)
	r.mu.Unlock()
	r.consumes.Add(1)
	go r.consume(conn, ch, deliveries, closed)
	r.log.Debug().Str("queue", queue).Strs("patterns", r.cfg.patterns).Msg("consuming events")
	if r.cfg.wake {
		// After the hook: the publisher waits for the connection to be
		// Ready, which it is not while its hooks run.
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.wakeWorkers()
		}()
	}
	return nil
}

// consume is the delivery path for one channel: decode, offer, repeat. It
// never runs user code and never blocks on a subscription.
func (r *Receiver) consume(conn *amqp091.Connection, ch *amqp091.Channel, deliveries <-chan amqp091.Delivery, chClosed <-chan *amqp091.Error) {
	defer r.wg.Done()
	select {
	case <-r.subscribed:
	case <-r.done:
		return
	case <-chClosed:
		// The channel died before anyone subscribed. Nothing it held was
		// acknowledged, so the broker delivers it again: discard the
		// copies here and set up again below.
		for range deliveries {
		}
	}
	r.handleAll(deliveries)
	// The deliveries channel closed: the connection died (the broker hook
	// redeclares on the next one), the Receiver closed, or only this
	// channel died (a channel error, a basic.cancel): then consume again
	// on the same connection.
	r.mu.Lock()
	closed := r.closed
	if r.ch == ch {
		r.ch = nil
	}
	r.mu.Unlock()
	if closed || conn.IsClosed() {
		return
	}
	r.log.Warn().Msg("event consumer cancelled; consuming again")
	r.retrySetup(conn)
}

// handleAll handles deliveries until the channel closes. It acknowledges
// in batches (multiple=true): after 256 events, and whenever no further
// delivery is waiting, so that nothing handled stays unacknowledged while
// the queue is idle.
func (r *Receiver) handleAll(deliveries <-chan amqp091.Delivery) {
	const batch = 256
	var last amqp091.Delivery
	n := 0
	ack := func() {
		if n > 0 {
			if err := last.Ack(true); err != nil {
				r.log.Debug().Err(err).Msg("event ack")
			}
			n = 0
		}
	}
	for {
		var d amqp091.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		default:
			ack()
			d, ok = <-deliveries
		}
		if !ok {
			return
		}
		r.handle(&d)
		last = d
		if n++; n >= batch {
			ack()
		}
	}
}

// retrySetup sets up consuming on conn again in the background, with
// backoff, until it succeeds, conn closes (the broker hook then takes
// over) or the Receiver closes.
func (r *Receiver) retrySetup(conn *amqp091.Connection) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for attempt := 1; ; attempt++ {
			select {
			case <-r.done:
				return
			case <-time.After(broker.DefaultBackoff(attempt)):
			}
			if conn.IsClosed() {
				return // the broker hook takes over on the next connection
			}
			err := r.setup(conn)
			if err == nil {
				return
			}
			r.log.Warn().Err(err).Int("attempt", attempt).Msg("re-consume failed")
		}
	}()
}

func (r *Receiver) handle(d *amqp091.Delivery) {
	r.received.Add(1)
	if len(d.Body) > r.cfg.maxBody {
		r.refused.Add(1)
		r.malformed.Add(1)
		r.log.Warn().Int("size", len(d.Body)).Int("max", r.cfg.maxBody).Str("routing_key", d.RoutingKey).
			Msg("event body too large; skipped")
		return
	}
	if c, ok := d.Headers["compression"]; ok && c != nil {
		r.refused.Add(1)
		r.malformed.Add(1)
		r.log.Warn().Str("compression", fmt.Sprint(c)).Str("routing_key", d.RoutingKey).
			Msg("compressed event body refused; skipped")
		return
	}
	if err := CheckContentType(d.ContentType, d.ContentEncoding); err != nil {
		r.refused.Add(1)
		r.malformed.Add(1)
		r.log.Warn().Err(err).Str("routing_key", d.RoutingKey).Msg("event skipped")
		return
	}
	evs, err := Decode(d.Body)
	if err != nil {
		r.malformed.Add(uint64(Malformed(err)))
		r.log.Warn().Err(err).Str("routing_key", d.RoutingKey).Int("decoded", len(evs)).
			Msg("malformed event body; bad events skipped")
	}
	if len(evs) == 0 {
		return
	}
	now := r.cfg.now()
	for _, ev := range evs {
		ev.EventHeader().Received = now
	}
	r.decoded.Add(uint64(len(evs)))
	r.mu.Lock()
	for s := range r.subs {
		for _, ev := range evs {
			s.offer(ev)
		}
	}
	r.mu.Unlock()
}

// Subscribe registers handler for the events that pass opts' filters, from
// now on. handler runs on the subscription's own goroutine, one event at a
// time, in arrival order; it should return quickly, since events that
// arrive while the buffer is full are dropped (see Buffer and OnOverflow).
// A panic in handler is recovered, logged and counted.
//
// The subscription ends when ctx ends, on Stop or Drain, or when the
// Receiver closes; Closed tells when. Subscribe itself does not block.
func (r *Receiver) Subscribe(ctx context.Context, handler func(Event), opts ...SubOption) (*Subscription, error) {
	if handler == nil {
		return nil, errors.New("events: Subscribe: nil handler")
	}
	cfg := subConfig{buffer: DefaultBuffer}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.buffer <= 0 {
		return nil, fmt.Errorf("events: Buffer(%d): must be positive", cfg.buffer)
	}
	if cfg.overflow != DropNewest && cfg.overflow != DropOldest {
		return nil, fmt.Errorf("events: unknown overflow policy %v", cfg.overflow)
	}
	if cfg.tasks && cfg.workers {
		return nil, errors.New("events: OnlyTasks and OnlyWorkers together match nothing")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := newSubscription(r, handler, cfg)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	r.subs[s] = struct{}{}
	r.wg.Add(1)
	r.mu.Unlock()
	r.subOnce.Do(func() { close(r.subscribed) })
	go func() {
		defer r.wg.Done()
		s.run(ctx)
	}()
	return s, nil
}

// remove is called by a subscription's goroutine as it exits.
func (r *Receiver) remove(s *Subscription) {
	r.mu.Lock()
	delete(r.subs, s)
	r.mu.Unlock()
}

// Stats returns the Receiver's counters.
func (r *Receiver) Stats() Stats {
	st := Stats{
		Received:  r.received.Load(),
		Decoded:   r.decoded.Load(),
		Malformed: r.malformed.Load(),
		Refused:   r.refused.Load(),
		Consumes:  r.consumes.Load(),
	}
	st.Dropped = r.dropped.Load()
	return st
}

// Close stops consuming, stops every subscription (discarding buffered
// events), waits for their handlers to return and for every goroutine the
// Receiver started to exit, deletes nothing (the queue goes away with the
// connection, or after QueueExpires if Durable), and closes the connection
// if the Receiver owns it (Dial). It is idempotent. Do not call it from a
// handler.
func (r *Receiver) Close() error {
	r.shutdown()
	r.wg.Wait()
	var err error
	if r.owned {
		err = r.conn.Close()
	}
	r.pub.Close()
	return err
}

func (r *Receiver) shutdown() {
	r.closeOnce.Do(func() {
		close(r.done)
		r.mu.Lock()
		r.closed = true
		ch := r.ch
		r.ch = nil
		subs := make([]*Subscription, 0, len(r.subs))
		for s := range r.subs {
			subs = append(subs, s)
		}
		r.mu.Unlock()
		if ch != nil {
			// Cancel, then close: the consume loop ends when the
			// deliveries channel closes.
			_ = ch.Cancel(r.tag, false)
			_ = ch.Close()
		}
		for _, s := range subs {
			s.Stop()
		}
	})
}

// wakeWorkers broadcasts the "heartbeat" control command, without asking
// for replies, as Celery's receiver does when it starts: every worker
// answers with an immediate worker-heartbeat. It is not mandatory: with no
// worker online there is nobody to wake.
func (r *Receiver) wakeWorkers() {
	ctx, cancel := context.WithTimeout(r.conn.Life(), 10*time.Second)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-r.done:
			cancel()
		case <-stop:
		}
	}()
	body, err := celery.EncodeControl("heartbeat", nil, nil, "", "")
	if err == nil {
		err = r.pub.Ensure(ctx, "exchange\x00"+celery.ControlExchange, func(conn *amqp091.Connection) error {
			ch, err := conn.Channel()
			if err != nil {
				return err
			}
			defer ch.Close()
			// celery.pidbox is fanout and NOT durable: any other flags
			// close the channel with 406.
			return ch.ExchangeDeclare(celery.ControlExchange, amqp091.ExchangeFanout, false, false, false, false, nil)
		})
	}
	if err == nil {
		err = r.pub.Publish(ctx, broker.Message{Exchange: celery.ControlExchange, Msg: amqp091.Publishing{
			ContentType:     "application/json",
			ContentEncoding: "utf-8",
			DeliveryMode:    amqp091.Persistent,
			Headers:         amqp091.Table(celery.ControlHeaders(1, time.Now(), time.Second)),
			Body:            body,
		}})
	}
	if err != nil && ctx.Err() == nil {
		r.log.Warn().Err(err).Msg("heartbeat broadcast failed")
	}
}
