package amqp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
)

// ReplyMode selects how results come back.
type ReplyMode int

const (
	// PerTask: one durable reply queue per task (the default).
	PerTask ReplyMode = iota
	// Shared: one durable reply queue per client, results routed by id.
	Shared
)

func (m ReplyMode) String() string {
	switch m {
	case PerTask:
		return "per-task"
	case Shared:
		return "shared"
	}
	return fmt.Sprintf("ReplyMode(%d)", int(m))
}

// ParseReplyMode reads "per-task" or "shared".
func ParseReplyMode(s string) (ReplyMode, error) {
	switch s {
	case "per-task", "pertask", "per_task":
		return PerTask, nil
	case "shared":
		return Shared, nil
	}
	return 0, fmt.Errorf("stalk: unknown reply mode %q (want per-task or shared)", s)
}

// TaskQueue is one of the fleet's task queues, as its workers declare it
// (Celery's kombu.Queue in task_queues): name, exchange and exchange type,
// routing key, queue type and extra arguments. See WithTaskQueues.
type TaskQueue = celery.Queue

// QueueType is a RabbitMQ queue type.
type QueueType = celery.QueueType

// Queue types.
const (
	Classic = celery.Classic
	Quorum  = celery.Quorum
)

// Exchange types for TaskQueue.ExchangeType.
const (
	DirectExchange  = celery.Direct
	TopicExchange   = celery.Topic
	FanoutExchange  = celery.Fanout
	HeadersExchange = celery.Headers
)

// DelayedDelivery says when a task with a countdown or an ETA goes through
// Celery 5.5+'s native delayed delivery (the celery_delayed_* queues a
// 5.5+ worker declares) instead of being held in the worker's memory.
type DelayedDelivery int

const (
	// DelayedAuto (the default) uses native delayed delivery for a delay of
	// at least one second to a quorum queue on a non-direct exchange, as
	// Celery does, when the celery_delayed_27 exchange exists. When it does
	// not (no 5.5+ worker with quorum queues ever started on the vhost),
	// the task is sent as a worker-held ETA task instead, and the client
	// logs one warning.
	DelayedAuto DelayedDelivery = iota
	// DelayedOff always sends worker-held ETA tasks.
	DelayedOff
	// DelayedRequired is DelayedAuto, except that a task that would fall
	// back to a worker-held ETA fails with ErrNoDelayedDelivery.
	DelayedRequired
)

// Option configures Dial.
type Option func(*config)

type config struct {
	logger        zerolog.Logger
	mode          ReplyMode
	modeSet       bool
	replyQueue    string
	replyPrefix   string
	resultExpires time.Duration
	tls           *tls.Config
	name          string
	backoff       broker.Backoff
	maxBody       int
	cacheSize     int
	cacheTTL      time.Duration
	lanes         int
	lanesSet      bool
	prefetch      int
	sentEvents    bool
	heartbeat     time.Duration

	events         bool
	eventStateOpts []events.StateOption

	brokers   []string
	failover  broker.Failover
	replyType QueueType

	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	propagator     propagation.TextMapPropagator

	topo    celery.Topology
	declare bool
	delayed DelayedDelivery
}

func defaultConfig() config {
	return config{
		logger:        zerolog.Nop(),
		mode:          PerTask,
		replyPrefix:   "stalk.reply.",
		resultExpires: 24 * time.Hour,
		name:          "stalk",
		maxBody:       16 << 20,
		cacheSize:     10000,
		cacheTTL:      time.Hour,
		lanes:         16,
		prefetch:      512,
		declare:       true,
		topo: celery.Topology{
			DefaultQueue:  "celery",
			CreateMissing: true,
		},
	}
}

func (c *config) validate() error {
	var errs []error
	if c.mode != PerTask && c.mode != Shared {
		errs = append(errs, fmt.Errorf("unknown reply mode %d", c.mode))
	}
	if c.replyQueue != "" && c.modeSet && c.mode != Shared {
		errs = append(errs, fmt.Errorf("WithReplyQueue(%q) names a shared reply queue, but WithReplyMode(%s) was given", c.replyQueue, c.mode))
	}
	if c.lanesSet && c.mode == Shared {
		errs = append(errs, errors.New("WithLanes applies to per-task reply queues, but the reply mode is shared"))
	}
	if c.resultExpires < time.Second {
		errs = append(errs, fmt.Errorf("result lifetime %s is under 1s", c.resultExpires))
	}
	if c.resultExpires > time.Duration(1<<31-1)*time.Millisecond {
		errs = append(errs, fmt.Errorf("result lifetime %s is over RabbitMQ's x-expires limit (about 24.8 days)", c.resultExpires))
	}
	if c.maxBody <= 0 {
		errs = append(errs, errors.New("max body size must be positive"))
	}
	if c.cacheSize <= 0 || c.cacheTTL <= 0 {
		errs = append(errs, errors.New("result cache size and TTL must be positive"))
	}
	if c.lanes <= 0 || c.lanes > 256 {
		errs = append(errs, fmt.Errorf("lanes %d is outside 1..256", c.lanes))
	}
	if c.prefetch < 0 || c.prefetch > 65535 {
		errs = append(errs, fmt.Errorf("prefetch %d is outside 0..65535", c.prefetch))
	}
	if c.replyPrefix == "" {
		errs = append(errs, errors.New("reply queue prefix is empty"))
	}
	switch c.delayed {
	case DelayedAuto, DelayedOff, DelayedRequired:
	default:
		errs = append(errs, fmt.Errorf("unknown delayed delivery mode %d", c.delayed))
	}
	switch c.replyType {
	case "", Classic:
	case Quorum:
		if c.mode != Shared {
			errs = append(errs, errors.New("quorum reply queues need the shared reply mode: a quorum queue per task is a Raft group per task, which the broker creates and deletes at a small fraction of the rate of classic queues (see the README's Clusters section); use WithReplyMode(Shared) or WithReplyQueue"))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown reply queue type %q (want classic or quorum)", c.replyType))
	}
	switch c.failover {
	case RoundRobin, Shuffle:
	default:
		errs = append(errs, fmt.Errorf("unknown failover strategy %d", c.failover))
	}
	if err := c.topo.Validate(); err != nil {
		errs = append(errs, err)
	}
	// Room for a UUID task id after the prefix (a per-task queue name).
	for _, f := range []struct {
		what, v string
		room    int
	}{
		{"reply queue", c.replyQueue, 0}, {"reply queue prefix", c.replyPrefix, 36}, {"connection name", c.name, len("-results")},
	} {
		if err := celery.CheckShortString(f.what, f.v, f.room); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidOption, errors.Join(errs...))
	}
	return nil
}

// Failover is the order in which the client tries the broker URLs of a
// cluster (Celery's broker_failover_strategy).
type Failover = broker.Failover

// Failover strategies.
const (
	// RoundRobin tries the URLs in the order given, and after a lost
	// connection goes on with the next one (the default).
	RoundRobin = broker.RoundRobin
	// Shuffle tries them in a random order, shuffled again after every
	// round, so that a fleet of clients spreads over the nodes.
	Shuffle = broker.Shuffle
)

// WithBrokerURLs adds broker URLs to fail over to, after Dial's own (which
// may itself be Celery's ";"-separated list, "amqp://a//;amqp://b//"). All
// the client's connections (publishing, results, remote control, events)
// use the list: the first node being down at Dial is normal, and a
// connection that drops is redialled on the next node. Default: Dial's
// URL only.
func WithBrokerURLs(urls ...string) Option {
	return func(c *config) { c.brokers = append(c.brokers, urls...) }
}

// WithReplyQueueType sets the type of the shared reply queue. Quorum keeps
// the queue, and the results waiting in it, on a majority of a cluster's
// nodes: results survive losing any one node (the queue keeps its
// x-expires). Shared mode only: per-task quorum queues are refused.
// Default: Classic, whose queue lives on the node that declared it.
func WithReplyQueueType(t QueueType) Option { return func(c *config) { c.replyType = t } }

// WithFailover sets the order in which the broker URLs are tried.
// Default: RoundRobin.
func WithFailover(f Failover) Option { return func(c *config) { c.failover = f } }

// WithLogger sets the logger. Default: zerolog.Nop(). Passwords in URLs are
// always redacted.
func WithLogger(l zerolog.Logger) Option { return func(c *config) { c.logger = l } }

// WithSlogLogger logs through l instead of a zerolog.Logger: each event's
// level, message and fields become an slog record. Default: no logging.
func WithSlogLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = broker.SlogLogger(l) }
}

// WithReplyMode selects PerTask (the default) or Shared reply queues.
func WithReplyMode(m ReplyMode) Option { return func(c *config) { c.mode, c.modeSet = m, true } }

// WithReplyQueue names the shared reply queue, so that a restarted process
// gets back the results of tasks it sent before it stopped. It implies
// Shared mode; with WithReplyMode(PerTask) Dial fails. Default: Shared
// mode uses "stalk.reply.<random uuid>".
func WithReplyQueue(name string) Option {
	return func(c *config) {
		c.replyQueue = name
		if !c.modeSet {
			c.mode = Shared
		}
	}
}

// WithReplyQueuePrefix sets the prefix of per-task reply queue names
// (prefix + task id). Default: "stalk.reply.". Every process that attaches
// to the same tasks must use the same prefix.
func WithReplyQueuePrefix(p string) Option { return func(c *config) { c.replyPrefix = p } }

// WithResultExpires sets how long an unused reply queue lives (its
// x-expires). Default: 24h, Celery's result_expires.
func WithResultExpires(d time.Duration) Option { return func(c *config) { c.resultExpires = d } }

// WithTLS sets the TLS configuration for amqps:// URLs: custom CAs, client
// certificates, ServerName. Default: the system roots.
func WithTLS(t *tls.Config) Option { return func(c *config) { c.tls = t } }

// WithConnectionName sets the name RabbitMQ shows for the client's
// connections; "-publish", "-results", "-control" and "-events" are
// appended. Default: "stalk".
func WithConnectionName(n string) Option { return func(c *config) { c.name = n } }

// WithBackoff sets the redial delay function. Default: capped exponential
// backoff with jitter, 100 ms doubling to 5 s.
func WithBackoff(b func(attempt int) time.Duration) Option {
	return func(c *config) { c.backoff = b }
}

// WithMaxBodySize caps the size of a result message; larger ones are
// counted, logged and dropped. Default: 16 MiB.
func WithMaxBodySize(n int) Option { return func(c *config) { c.maxBody = n } }

// WithResultCache bounds the results kept for later readers: final states
// (a later AsyncResult for the same id reads them without asking the
// broker) and results for ids nobody has asked for yet. At most size
// entries, each for at most ttl. Evicting a result that nobody ever asked
// for is logged as a warning; evicting one that was read is routine and
// only counted. Default: 10,000 entries, 1 hour.
func WithResultCache(size int, ttl time.Duration) Option {
	return func(c *config) { c.cacheSize, c.cacheTTL = size, ttl }
}

// WithDefaultQueue sets the queue tasks go to when Send names none
// (Celery's task_default_queue). Default: "celery".
func WithDefaultQueue(q string) Option { return func(c *config) { c.topo.DefaultQueue = q } }

// WithDefaultQueueType sets the type of the default queue when stalk has
// to create it and WithTaskQueues does not list it (Celery's
// task_default_queue_type). Default: Classic. A fleet of Celery 5.5+
// workers with task_default_queue_type = "quorum" needs Quorum here, or
// WithDeclareQueues(false).
func WithDefaultQueueType(t QueueType) Option {
	return func(c *config) { c.topo.DefaultQueueType = t }
}

// WithTaskQueues lists the fleet's task queues as its workers declare them
// (Celery's task_queues). A task sent to one of them is routed as Celery
// routes it: to the default exchange with the queue's name for a direct
// exchange, otherwise to the queue's exchange with its routing key; and a
// queue that does not exist yet is declared with its type and arguments.
// A queue that exists is always used as it is. Default: none.
func WithTaskQueues(queues ...TaskQueue) Option {
	return func(c *config) { c.topo.Queues = append(c.topo.Queues, queues...) }
}

// WithCreateMissingQueues says whether a task may name a queue that
// WithTaskQueues does not list and that is not the default queue
// (Celery's task_create_missing_queues). Such a queue gets a direct
// exchange of its name and the WithMissingQueueType type. Default: true.
// With false, Send fails with ErrUnknownQueue.
func WithCreateMissingQueues(b bool) Option { return func(c *config) { c.topo.CreateMissing = b } }

// WithMissingQueueType sets the type of queues created for names
// WithTaskQueues does not list (Celery's task_create_missing_queue_type).
// Default: Classic.
func WithMissingQueueType(t QueueType) Option {
	return func(c *config) { c.topo.MissingQueueType = t }
}

// WithMissingExchangeType sets the exchange type of queues created for
// names WithTaskQueues does not list (Celery's
// task_create_missing_queue_exchange_type). Default: "direct".
func WithMissingExchangeType(t string) Option {
	return func(c *config) { c.topo.MissingExchangeType = t }
}

// WithDeclareQueues says whether stalk may declare a task queue (and its
// exchange and binding) that does not exist. With false the workers own
// the topology: stalk never declares a task queue, and a task to a queue
// that does not exist fails with ErrQueueNotFound. Either way a queue that
// exists is used as it is, checked with a passive declare, so stalk never
// causes a 406 PRECONDITION_FAILED. Default: true.
func WithDeclareQueues(b bool) Option { return func(c *config) { c.declare = b } }

// WithDelayedDelivery sets when countdowns and ETAs use native delayed
// delivery. Default: DelayedAuto.
func WithDelayedDelivery(d DelayedDelivery) Option { return func(c *config) { c.delayed = d } }

// WithLanes sets how many AMQP channels per-task mode uses for reply queue
// declarations and consumers. Default: 16. It is an error in shared mode,
// which uses one.
func WithLanes(n int) Option { return func(c *config) { c.lanes, c.lanesSet = n, true } }

// WithPrefetch sets the consumer prefetch per reply channel (per-consumer
// QoS). Default: 512.
func WithPrefetch(n int) Option { return func(c *config) { c.prefetch = n } }

// WithSentEvents publishes a task-sent event for every task, as Celery's
// task_send_sent_event does, so Flower and `celery events` see Go tasks.
// Default: off.
func WithSentEvents(b bool) Option { return func(c *config) { c.sentEvents = b } }

// WithHeartbeat sets the AMQP heartbeat. Default: 10 s.
func WithHeartbeat(d time.Duration) Option { return func(c *config) { c.heartbeat = d } }

// WithEvents runs a Celery event receiver, on a connection of its own, and
// keeps an events.State (Client.Events). AsyncResult's Worker, Retries,
// DateDone and Name are then filled from task events too, also for tasks
// this process did not send. The workers must send task events (celery
// worker -E). Default: off.
func WithEvents(opts ...events.StateOption) Option {
	return func(c *config) { c.events, c.eventStateOpts = true, opts }
}
