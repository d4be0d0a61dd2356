package events

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
)

// Defaults for Receiver options.
const (
	DefaultQueuePrefix  = "celeryev"
	DefaultMessageTTL   = 5 * time.Second  // Celery's event_queue_ttl
	DefaultQueueExpires = 60 * time.Second // Celery's event_queue_expires
	DefaultPattern      = "#"
)

// Option configures a Receiver.
type Option func(*config)

type config struct {
	log      zerolog.Logger
	queue    string
	prefix   string
	ttl      time.Duration
	expires  time.Duration
	patterns []string
	durable  bool
	wake     bool
	maxBody  int
	connName string
	tls      *tls.Config
	backoff  broker.Backoff
	failover string
	now      func() time.Time
}

func defaultConfig() config {
	return config{
		log:      zerolog.Nop(),
		prefix:   DefaultQueuePrefix,
		ttl:      DefaultMessageTTL,
		expires:  DefaultQueueExpires,
		wake:     true,
		maxBody:  DefaultMaxBodySize,
		connName: "stalk-events",
		now:      time.Now,
	}
}

func (c *config) validate() error {
	if c.ttl < time.Millisecond {
		return fmt.Errorf("events: MessageTTL %s: must be at least 1ms", c.ttl)
	}
	if c.expires < time.Millisecond {
		return fmt.Errorf("events: QueueExpires %s: must be at least 1ms", c.expires)
	}
	if c.ttl > time.Duration(1<<31-1)*time.Millisecond || c.expires > time.Duration(1<<31-1)*time.Millisecond {
		return errors.New("events: MessageTTL and QueueExpires must fit in int32 milliseconds")
	}
	if c.maxBody <= 0 {
		return fmt.Errorf("events: MaxBodySize %d: must be positive", c.maxBody)
	}
	if c.queue == "" && c.prefix == "" {
		return errors.New("events: QueuePrefix is empty")
	}
	// AMQP limits names and routing keys to 255 bytes, and amqp091-go
	// truncates longer ones without a word; a generated name adds a UUID.
	if err := celery.CheckShortString("QueueName", c.queue, 0); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	if c.queue == "" {
		// A generated name is the prefix, a dot and a UUID.
		if err := celery.CheckShortString("QueuePrefix", c.prefix, 37); err != nil {
			return fmt.Errorf("events: %w", err)
		}
	}
	for _, p := range c.patterns {
		if p == "" {
			return errors.New("events: empty binding pattern")
		}
		if err := celery.CheckShortString("binding pattern", p, 0); err != nil {
			return fmt.Errorf("events: %w", err)
		}
	}
	if len(c.patterns) == 0 {
		c.patterns = []string{DefaultPattern}
	}
	return nil
}

// WithLogger sets the logger. Default: zerolog.Nop().
func WithLogger(l zerolog.Logger) Option { return func(c *config) { c.log = l } }

// Bind sets the routing-key patterns the event queue is bound to on the
// celeryev topic exchange, e.g. Bind("task.#") for task events only or
// Bind("worker.#") for worker events only. Bind task events with "task.#",
// never with single keys such as "task.succeeded": workers batch them under
// "task.multi". Default: "#", every event.
func Bind(patterns ...string) Option {
	return func(c *config) { c.patterns = append(c.patterns, patterns...) }
}

// TaskEvents binds "task.#". Same as Bind("task.#").
func TaskEvents() Option { return Bind("task.#") }

// WorkerEvents binds "worker.#". Same as Bind("worker.#").
func WorkerEvents() Option { return Bind("worker.#") }

// QueueName sets the event queue's full name. Default: QueuePrefix + "." +
// a random UUID, as Celery names it.
func QueueName(name string) Option { return func(c *config) { c.queue = name } }

// QueuePrefix sets the prefix of the generated queue name. Default:
// "celeryev".
func QueuePrefix(p string) Option { return func(c *config) { c.prefix = p } }

// MessageTTL sets the queue's x-message-ttl: events older than this are
// dropped by the broker if not consumed. Default: 5 s (Celery's
// event_queue_ttl).
func MessageTTL(d time.Duration) Option { return func(c *config) { c.ttl = d } }

// QueueExpires sets the queue's x-expires: the broker deletes the queue
// once it has had no consumer for this long. Default: 60 s (Celery's
// event_queue_expires).
func QueueExpires(d time.Duration) Option { return func(c *config) { c.expires = d } }

// Durable declares the event queue durable and non-exclusive, so that it
// outlives a connection (for up to QueueExpires) and events published
// while reconnecting wait in it (for up to MessageTTL). Default: the queue
// is exclusive to the connection (as in Celery's newest releases), and a
// reconnect declares it anew. Transient non-exclusive queues, Celery 5.2's
// choice, are never used: RabbitMQ 4.3 refuses them.
func Durable() Option { return func(c *config) { c.durable = true } }

// WithoutWake disables the "heartbeat" broadcast on celery.pidbox that the
// Receiver sends, as Celery's receiver does, whenever it starts consuming,
// so that workers announce themselves at once instead of within their
// heartbeat interval. Default: the broadcast is sent.
func WithoutWake() Option { return func(c *config) { c.wake = false } }

// MaxBodySize sets the largest event body decoded; larger bodies are
// counted as malformed and skipped. Default: DefaultMaxBodySize (8 MiB).
func MaxBodySize(n int) Option { return func(c *config) { c.maxBody = n } }

// ConnectionName sets the AMQP connection name Dial uses (shown by
// rabbitmqctl). Ignored by NewReceiver. Default: "stalk-events".
func ConnectionName(n string) Option { return func(c *config) { c.connName = n } }

// WithTLS sets the TLS configuration for amqps:// URLs. Default: the
// system roots.
func WithTLS(t *tls.Config) Option { return func(c *config) { c.tls = t } }

// WithFailover sets the order in which a ";"-separated list of broker URLs
// is tried, by Celery's broker_failover_strategy names: "round-robin" (the
// default) or "shuffle".
func WithFailover(strategy string) Option { return func(c *config) { c.failover = strategy } }

// WithBackoff sets the redial delay function. Default: capped exponential
// backoff with jitter, 100 ms doubling to 5 s.
func WithBackoff(b func(attempt int) time.Duration) Option {
	return func(c *config) { c.backoff = b }
}

// SubOption configures a Subscription.
type SubOption func(*subConfig)

// Overflow says which event a full subscription buffer drops.
type Overflow int

const (
	// DropNewest discards the incoming event when the buffer is full
	// (the default): the handler sees a prefix of the burst.
	DropNewest Overflow = iota
	// DropOldest discards the oldest buffered event to make room: the
	// handler sees the most recent events.
	DropOldest
)

func (o Overflow) String() string {
	switch o {
	case DropNewest:
		return "drop-newest"
	case DropOldest:
		return "drop-oldest"
	}
	return fmt.Sprintf("Overflow(%d)", int(o))
}

// DefaultBuffer is a subscription's default buffer size, in events.
const DefaultBuffer = 4096

type subConfig struct {
	buffer   int
	overflow Overflow
	types    map[string]bool
	hosts    map[string]bool
	tasks    bool
	workers  bool
}

// Buffer sets how many events may wait for the handler. Default:
// DefaultBuffer (4096).
func Buffer(n int) SubOption { return func(c *subConfig) { c.buffer = n } }

// OnOverflow sets what happens when the buffer is full. Either way the
// event is counted in Stats().Dropped and logged (at most once a second).
// Default: DropNewest.
func OnOverflow(o Overflow) SubOption { return func(c *subConfig) { c.overflow = o } }

// Types limits the subscription to the given event types, e.g.
// Types(events.TypeTaskSucceeded, events.TypeTaskFailed). Default: every
// type.
func Types(types ...string) SubOption {
	return func(c *subConfig) {
		if c.types == nil {
			c.types = map[string]bool{}
		}
		for _, t := range types {
			c.types[t] = true
		}
	}
}

// Hostnames limits the subscription to events sent by the given hosts
// (worker nodenames such as "celery@host", or "gen<pid>@host"). Default:
// every sender.
func Hostnames(hosts ...string) SubOption {
	return func(c *subConfig) {
		if c.hosts == nil {
			c.hosts = map[string]bool{}
		}
		for _, h := range hosts {
			c.hosts[h] = true
		}
	}
}

// OnlyTasks limits the subscription to task events.
func OnlyTasks() SubOption { return func(c *subConfig) { c.tasks = true } }

// OnlyWorkers limits the subscription to worker events.
func OnlyWorkers() SubOption { return func(c *subConfig) { c.workers = true } }

func (c *subConfig) match(h *Header) bool {
	if c.types != nil && !c.types[h.Type] {
		return false
	}
	if c.hosts != nil && !c.hosts[h.Hostname] {
		return false
	}
	if c.tasks && !IsTask(h.Type) {
		return false
	}
	if c.workers && !IsWorker(h.Type) {
		return false
	}
	return true
}
