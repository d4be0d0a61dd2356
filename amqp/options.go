package amqp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/internal/broker"
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

// Option configures Dial.
type Option func(*config)

type config struct {
	logger         zerolog.Logger
	mode           ReplyMode
	replyQueue     string
	replyPrefix    string
	resultExpires  time.Duration
	tls            *tls.Config
	name           string
	backoff        broker.Backoff
	maxBody        int
	cacheSize      int
	cacheTTL       time.Duration
	defaultQueue   string
	lanes          int
	prefetch       int
	sentEvents     bool
	heartbeat      time.Duration
	declareDefault bool
	events         bool
	eventStateOpts []events.StateOption
}

func defaultConfig() config {
	return config{
		logger:         zerolog.Nop(),
		mode:           PerTask,
		replyPrefix:    "stalk.reply.",
		resultExpires:  24 * time.Hour,
		name:           "stalk",
		maxBody:        16 << 20,
		cacheSize:      10000,
		cacheTTL:       time.Hour,
		defaultQueue:   "celery",
		lanes:          16,
		prefetch:       512,
		declareDefault: true,
	}
}

func (c *config) validate() error {
	var errs []error
	if c.mode != PerTask && c.mode != Shared {
		errs = append(errs, fmt.Errorf("unknown reply mode %d", c.mode))
	}
	if c.resultExpires < time.Second {
		errs = append(errs, fmt.Errorf("result lifetime %s is under 1s", c.resultExpires))
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
	if c.defaultQueue == "" {
		errs = append(errs, errors.New("default queue is empty"))
	}
	if c.replyPrefix == "" {
		errs = append(errs, errors.New("reply queue prefix is empty"))
	}
	// Room for a UUID task id after the prefix (a per-task queue name).
	for _, f := range []struct {
		what, v string
		room    int
	}{
		{"default queue", c.defaultQueue, 0}, {"reply queue", c.replyQueue, 0},
		{"reply queue prefix", c.replyPrefix, 36},
	} {
		if err := broker.CheckShortString(f.what, f.v, f.room); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("stalk: invalid options: %w", errors.Join(errs...))
	}
	return nil
}

// WithLogger sets the logger. Default: zerolog.Nop(). Passwords in URLs are
// always redacted.
func WithLogger(l zerolog.Logger) Option { return func(c *config) { c.logger = l } }

// WithReplyMode selects PerTask (the default) or Shared reply queues.
func WithReplyMode(m ReplyMode) Option { return func(c *config) { c.mode = m } }

// WithReplyQueue selects Shared mode with a stable reply queue name, so that
// a restarted process gets back the results of tasks it sent before. Default:
// Shared mode uses "stalk.reply.<random uuid>".
func WithReplyQueue(name string) Option {
	return func(c *config) { c.mode, c.replyQueue = Shared, name }
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
// connections; "-publish" and "-results" are appended. Default: "stalk".
func WithConnectionName(n string) Option { return func(c *config) { c.name = n } }

// WithBackoff sets the redial delay function. Default: capped exponential
// backoff with jitter, 100 ms doubling to 5 s.
func WithBackoff(b func(attempt int) time.Duration) Option {
	return func(c *config) { c.backoff = b }
}

// WithMaxBodySize caps the size of a result message; larger ones are
// counted, logged and dropped. Default: 16 MiB.
func WithMaxBodySize(n int) Option { return func(c *config) { c.maxBody = n } }

// WithResultCache bounds the results kept for ids nobody is waiting on yet
// (results of other processes' tasks on a shared queue, or finished results
// not yet asked for): at most size entries, each for at most ttl. Evictions
// are counted and logged. Default: 10,000 entries, 1 hour.
func WithResultCache(size int, ttl time.Duration) Option {
	return func(c *config) { c.cacheSize, c.cacheTTL = size, ttl }
}

// WithDefaultQueue sets the queue tasks go to when Send names none.
// Default: "celery".
func WithDefaultQueue(q string) Option { return func(c *config) { c.defaultQueue = q } }

// WithLanes sets how many AMQP channels per-task mode uses for reply queue
// declarations and consumers. Default: 16. Shared mode uses one.
func WithLanes(n int) Option { return func(c *config) { c.lanes = n } }

// WithPrefetch sets the consumer prefetch per reply channel. Default: 512.
func WithPrefetch(n int) Option { return func(c *config) { c.prefetch = n } }

// WithSentEvents publishes a task-sent event for every task, as Celery's
// task_send_sent_event does, so Flower and `celery events` see Go tasks.
// Default: off.
func WithSentEvents(b bool) Option { return func(c *config) { c.sentEvents = b } }

// WithHeartbeat sets the AMQP heartbeat. Default: 10 s.
func WithHeartbeat(d time.Duration) Option { return func(c *config) { c.heartbeat = d } }
