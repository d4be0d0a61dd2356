package revoke

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Control commands: Celery's `celery control` over the same pidbox
// broadcast as Revoke. Each typed helper checks its arguments before
// anything is published (errors wrap ErrInvalidArgument) and sends the
// arguments as Celery's worker reads them (celery/worker/control.py).
//
// Like app.control.broadcast in Celery, a control command asks for no
// reply unless Wait is given; with Wait the replies are collected as for
// Ping, and an {"error": ...} reply comes back as a *WorkerError.

// Broadcast sends any remote-control command with its arguments, as
// Celery's app.control.broadcast does, e.g. "heartbeat", or a command of
// a newer worker that has no helper here. Without Wait it returns once
// the broker has confirmed the broadcast, with no replies; with Wait it
// collects them. args may be nil. Terminate and Signal are refused: they
// belong to revokes.
func (c *Controller) Broadcast(ctx context.Context, method string, args map[string]any, opts ...Option) ([]Reply, error) {
	if method == "" {
		return nil, fmt.Errorf("stalk: broadcast: %w", invalid("empty method"))
	}
	var a any
	if args != nil {
		a = args
	}
	return c.control(ctx, method, a, opts)
}

// control validates opts for a control command and sends it.
func (c *Controller) control(ctx context.Context, method string, args any, opts []Option) ([]Reply, error) {
	o, err := resolveControl(opts)
	if err != nil {
		return nil, fmt.Errorf("stalk: %s: %w", method, err)
	}
	return c.call(ctx, method, args, o)
}

// resolveControl is resolve for control commands: replies only with
// Wait, and no revoke options.
func resolveControl(opts []Option) (Options, error) {
	o, err := resolve(kindRevoke, opts)
	if err != nil {
		return o, err
	}
	if o.Terminate || o.Signal != "" {
		return o, invalid("revoke.Terminate and revoke.Signal apply only to revokes")
	}
	return o, nil
}

// rateRE is the form Celery's rate() reads: a number, optionally per
// second, minute or hour ("10", "10/s", "2.5/m", "100/h"). Celery looks at
// the first letter of the unit only, so "10/sec" is accepted too.
var rateRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(/[smh][a-z]*)?$`)

// RateLimit sets the rate limit of tasks named task on the workers:
// Celery's rate_limit, e.g. "10/m" for at most ten a minute per worker, or
// "" to remove the limit. A worker that does not know the task answers
// {"error": "unknown task"}.
func (c *Controller) RateLimit(ctx context.Context, task, rate string, opts ...Option) ([]Reply, error) {
	args, err := rateLimitArgs(task, rate)
	if err != nil {
		return nil, err
	}
	return c.control(ctx, "rate_limit", args, opts)
}

func rateLimitArgs(task, rate string) (any, error) {
	if task == "" {
		return nil, fmt.Errorf("stalk: rate_limit: %w", invalid("empty task name"))
	}
	if rate != "" && !rateRE.MatchString(rate) {
		return nil, fmt.Errorf("stalk: rate_limit: %w", invalid("rate %q: want a number of tasks, optionally per second, minute or hour: 10, 10/s, 5/m, 100/h", rate))
	}
	return struct {
		TaskName  string `json:"task_name"`
		RateLimit string `json:"rate_limit"`
	}{task, rate}, nil
}

// TimeLimit sets the soft and hard time limits of tasks named task on the
// workers: Celery's time_limit. Zero removes a limit. A task over its soft
// limit gets SoftTimeLimitExceeded raised inside it; one over its hard
// limit is killed. The limits apply to tasks the worker starts afterwards.
func (c *Controller) TimeLimit(ctx context.Context, task string, soft, hard time.Duration, opts ...Option) ([]Reply, error) {
	args, err := timeLimitArgs(task, soft, hard)
	if err != nil {
		return nil, err
	}
	return c.control(ctx, "time_limit", args, opts)
}

func timeLimitArgs(task string, soft, hard time.Duration) (any, error) {
	if task == "" {
		return nil, fmt.Errorf("stalk: time_limit: %w", invalid("empty task name"))
	}
	if soft < 0 || hard < 0 {
		return nil, fmt.Errorf("stalk: time_limit: %w", invalid("negative time limit"))
	}
	if soft > 0 && hard > 0 && soft > hard {
		return nil, fmt.Errorf("stalk: time_limit: %w", invalid("soft limit %s is over the hard limit %s", soft, hard))
	}
	return struct {
		TaskName string   `json:"task_name"`
		Soft     *float64 `json:"soft"`
		Hard     *float64 `json:"hard"`
	}{task, seconds(soft), seconds(hard)}, nil
}

// seconds is d in seconds, or nil (None: no limit) for zero.
func seconds(d time.Duration) *float64 {
	if d == 0 {
		return nil
	}
	s := d.Seconds()
	return &s
}

// ConsumerQueue is a queue AddConsumer asks workers to consume, declared
// by the worker as Celery's add_consumer declares it.
type ConsumerQueue struct {
	// Name is the queue's name. Required.
	Name string
	// Exchange is the exchange the queue is bound to. Default: Name.
	Exchange string
	// ExchangeType is the exchange's type. Default: "direct".
	ExchangeType string
	// RoutingKey is the binding key. Default: Name.
	RoutingKey string
	// Arguments are the queue's x-arguments, e.g. {"x-queue-type":
	// "quorum"} for a quorum queue. They must match the queue's if it
	// exists, or the worker's declare fails. Default: none.
	Arguments map[string]any
}

// AddConsumer asks the workers to start consuming q: Celery's
// add_consumer. The worker declares the queue (and its exchange and
// binding) if need be, and answers "add consumer <name>" before it has
// done so: the consumer starts a moment after the reply.
func (c *Controller) AddConsumer(ctx context.Context, q ConsumerQueue, opts ...Option) ([]Reply, error) {
	args, err := addConsumerArgs(q)
	if err != nil {
		return nil, err
	}
	return c.control(ctx, "add_consumer", args, opts)
}

func addConsumerArgs(q ConsumerQueue) (any, error) {
	const method = "add_consumer"
	if q.Name == "" {
		return nil, fmt.Errorf("stalk: %s: %w", method, invalid("empty queue name"))
	}
	switch q.ExchangeType {
	case "", "direct", "topic", "fanout", "headers":
	default:
		return nil, fmt.Errorf("stalk: %s: %w", method, invalid("exchange type %q: want direct, topic, fanout or headers", q.ExchangeType))
	}
	args := struct {
		Queue          string         `json:"queue"`
		Exchange       *string        `json:"exchange"`
		ExchangeType   *string        `json:"exchange_type"`
		RoutingKey     *string        `json:"routing_key"`
		QueueArguments map[string]any `json:"queue_arguments,omitempty"`
	}{Queue: q.Name, Exchange: orNull(q.Exchange), ExchangeType: orNull(q.ExchangeType), RoutingKey: orNull(q.RoutingKey), QueueArguments: q.Arguments}
	if _, err := json.Marshal(args.QueueArguments); err != nil {
		return nil, fmt.Errorf("stalk: %s: %w", method, invalid("queue arguments: %v", err))
	}
	return args, nil
}

func orNull(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// CancelConsumer asks the workers to stop consuming queue: Celery's
// cancel_consumer. Tasks the worker has already received still run.
func (c *Controller) CancelConsumer(ctx context.Context, queue string, opts ...Option) ([]Reply, error) {
	if queue == "" {
		return nil, fmt.Errorf("stalk: cancel_consumer: %w", invalid("empty queue name"))
	}
	return c.control(ctx, "cancel_consumer", struct {
		Queue string `json:"queue"`
	}{queue}, opts)
}

// PoolGrow asks the workers to add n processes (or threads) to their pool:
// Celery's pool_grow. A worker running with --autoscale refuses it.
func (c *Controller) PoolGrow(ctx context.Context, n int, opts ...Option) ([]Reply, error) {
	return c.poolResize(ctx, "pool_grow", n, opts)
}

// PoolShrink asks the workers to remove n processes (or threads) from
// their pool: Celery's pool_shrink. A worker running with --autoscale
// refuses it.
func (c *Controller) PoolShrink(ctx context.Context, n int, opts ...Option) ([]Reply, error) {
	return c.poolResize(ctx, "pool_shrink", n, opts)
}

func (c *Controller) poolResize(ctx context.Context, method string, n int, opts []Option) ([]Reply, error) {
	args, err := poolArgs(method, n)
	if err != nil {
		return nil, err
	}
	return c.control(ctx, method, args, opts)
}

func poolArgs(method string, n int) (any, error) {
	if n < 1 {
		return nil, fmt.Errorf("stalk: %s: %w", method, invalid("n must be at least 1, got %d", n))
	}
	return struct {
		N int `json:"n"`
	}{n}, nil
}

// Autoscale sets the bounds of the workers' autoscaler: Celery's
// autoscale. Only workers started with --autoscale accept it; others
// answer with an error.
func (c *Controller) Autoscale(ctx context.Context, maxProcs, minProcs int, opts ...Option) ([]Reply, error) {
	args, err := autoscaleArgs(maxProcs, minProcs)
	if err != nil {
		return nil, err
	}
	return c.control(ctx, "autoscale", args, opts)
}

func autoscaleArgs(maxProcs, minProcs int) (any, error) {
	if maxProcs < 1 || minProcs < 0 || minProcs > maxProcs {
		return nil, fmt.Errorf("stalk: autoscale: %w", invalid("want max ≥ 1 and 0 ≤ min ≤ max, got max %d, min %d", maxProcs, minProcs))
	}
	return struct {
		Max int `json:"max"`
		Min int `json:"min"`
	}{maxProcs, minProcs}, nil
}

// Shutdown asks the workers to shut down warmly: Celery's shutdown. They
// finish the tasks they run, then exit. A worker does not reply to it (it
// leaves instead), so with Wait the result is an ErrNoReply: give no Wait
// and watch the workers go with Ping.
func (c *Controller) Shutdown(ctx context.Context, opts ...Option) ([]Reply, error) {
	return c.control(ctx, "shutdown", nil, opts)
}

// EnableEvents asks the workers to send task events (the -E of celery
// worker): Celery's enable_events.
func (c *Controller) EnableEvents(ctx context.Context, opts ...Option) ([]Reply, error) {
	return c.control(ctx, "enable_events", nil, opts)
}

// DisableEvents asks the workers to stop sending task events: Celery's
// disable_events. Worker events (heartbeats) go on.
func (c *Controller) DisableEvents(ctx context.Context, opts ...Option) ([]Reply, error) {
	return c.control(ctx, "disable_events", nil, opts)
}

// Heartbeat asks the workers to send a worker-heartbeat event now:
// Celery's heartbeat. Workers do not reply to it.
func (c *Controller) Heartbeat(ctx context.Context, opts ...Option) ([]Reply, error) {
	return c.control(ctx, "heartbeat", nil, opts)
}

// ---- inspect helpers ---------------------------------------------------------

// ScheduledTask is a task a worker holds until its ETA or countdown, as
// inspect scheduled reports it.
type ScheduledTask struct {
	ETA      string   `json:"eta"` // ISO 8601, as the worker wrote it
	Priority *int     `json:"priority"`
	Request  TaskInfo `json:"request"`
}

// QueueDeclaration is a queue a worker consumes, as inspect active_queues
// reports it (kombu's Queue.as_dict).
type QueueDeclaration struct {
	Name     string `json:"name"`
	Exchange struct {
		Name string `json:"name"`
		Type string `json:"type"`
	} `json:"exchange"`
	RoutingKey     string         `json:"routing_key"`
	Durable        bool           `json:"durable"`
	Exclusive      bool           `json:"exclusive"`
	AutoDelete     bool           `json:"auto_delete"`
	NoAck          bool           `json:"no_ack"`
	QueueArguments map[string]any `json:"queue_arguments"`
}

// TaskQuery is what a worker knows of one task id, as inspect query_task
// reports it: State is "active", "reserved" or "ready" (received, not
// yet reserved).
type TaskQuery struct {
	State string
	Info  TaskInfo
}

// UnmarshalJSON reads the worker's [state, info] pair.
func (q *TaskQuery) UnmarshalJSON(b []byte) error {
	var pair []json.RawMessage
	if err := json.Unmarshal(b, &pair); err != nil {
		return err
	}
	if len(pair) != 2 {
		return fmt.Errorf("query_task entry has %d elements, want [state, info]", len(pair))
	}
	if err := json.Unmarshal(pair[0], &q.State); err != nil {
		return err
	}
	return json.Unmarshal(pair[1], &q.Info)
}

// Reserved returns, per worker, the tasks it has received and not started
// yet (inspect reserved): prefetched tasks waiting for a pool slot.
func (c *Controller) Reserved(ctx context.Context, opts ...Option) (map[string][]TaskInfo, error) {
	return inspectAs[[]TaskInfo](ctx, c, "reserved", nil, opts)
}

// Scheduled returns, per worker, the tasks it holds until their ETA or
// countdown (inspect scheduled).
func (c *Controller) Scheduled(ctx context.Context, opts ...Option) (map[string][]ScheduledTask, error) {
	return inspectAs[[]ScheduledTask](ctx, c, "scheduled", nil, opts)
}

// Registered returns, per worker, the names of the tasks it knows
// (inspect registered), Celery's built-in tasks left out. Each name may be
// followed by attributes in brackets when the worker has them set, e.g.
// "tasks.add [rate_limit=10/m]".
func (c *Controller) Registered(ctx context.Context, opts ...Option) (map[string][]string, error) {
	return inspectAs[[]string](ctx, c, "registered", nil, opts)
}

// ActiveQueues returns, per worker, the queues it consumes (inspect
// active_queues).
func (c *Controller) ActiveQueues(ctx context.Context, opts ...Option) (map[string][]QueueDeclaration, error) {
	return inspectAs[[]QueueDeclaration](ctx, c, "active_queues", nil, opts)
}

// QueryTask returns, per worker, what it knows of the given task ids
// (inspect query_task): only ids it has received and not finished
// appear. An empty id list is an error before anything is published.
func (c *Controller) QueryTask(ctx context.Context, ids []string, opts ...Option) (map[string]map[string]TaskQuery, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("stalk: query_task: %w", invalid("no task ids"))
	}
	for _, id := range ids {
		if strings.TrimSpace(id) == "" {
			return nil, fmt.Errorf("stalk: query_task: %w", invalid("empty task id"))
		}
	}
	return inspectAs[map[string]TaskQuery](ctx, c, "query_task", map[string]any{"ids": append([]string(nil), ids...)}, opts)
}

// Stats returns, per worker, its statistics (inspect stats) as the raw
// JSON object the worker sent: pool, broker, rusage, total counts per
// task, and more, depending on the worker's version and pool.
func (c *Controller) Stats(ctx context.Context, opts ...Option) (map[string]json.RawMessage, error) {
	return inspectAs[json.RawMessage](ctx, c, "stats", nil, opts)
}
