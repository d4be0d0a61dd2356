package celery

import (
	"errors"
	"fmt"
	"strings"
)

// QueueType is a RabbitMQ queue type: "classic" or "quorum".
type QueueType string

const (
	Classic QueueType = "classic"
	Quorum  QueueType = "quorum"
)

// Exchange types a queue can be bound through.
const (
	Direct  = "direct"
	Topic   = "topic"
	Fanout  = "fanout"
	Headers = "headers"
)

// Queue is one task queue as the fleet declares it: Celery's kombu.Queue
// in task_queues.
type Queue struct {
	// Name is the queue's name.
	Name string
	// Exchange is the exchange the queue is bound to. Default: Name.
	Exchange string
	// ExchangeType is "direct" (the default), "topic", "fanout" or
	// "headers". Tasks to a queue on a direct exchange are published to the
	// default exchange with the queue's name as routing key, as Celery
	// does; otherwise to the queue's exchange with its routing key.
	ExchangeType string
	// RoutingKey is the binding key, and the routing key tasks are
	// published with on a non-direct exchange. Default: Name.
	RoutingKey string
	// Type is the queue type. Default: the topology's default queue type
	// for the default queue, classic for queues listed in task_queues.
	Type QueueType
	// Arguments are extra x-arguments the queue is declared with, such as
	// x-max-priority (classic queues only) or x-max-length.
	Arguments map[string]any
}

// withDefaults fills the defaults in.
func (q Queue) withDefaults(typ QueueType) Queue {
	if q.Exchange == "" {
		q.Exchange = q.Name
	}
	if q.ExchangeType == "" {
		q.ExchangeType = Direct
	}
	if q.RoutingKey == "" {
		q.RoutingKey = q.Name
	}
	if q.Type == "" {
		q.Type = typ
	}
	return q
}

// Validate reports a queue RabbitMQ would refuse.
func (q Queue) Validate() error {
	if q.Name == "" {
		return errors.New("queue name is empty")
	}
	for _, f := range []struct{ what, v string }{{"queue", q.Name}, {"exchange", q.Exchange}, {"routing key", q.RoutingKey}} {
		if err := CheckShortString(f.what, f.v, 0); err != nil {
			return fmt.Errorf("queue %q: %w", q.Name, err)
		}
	}
	switch q.ExchangeType {
	case "", Direct, Topic, Fanout, Headers:
	default:
		return fmt.Errorf("queue %q: unknown exchange type %q (want direct, topic, fanout or headers)", q.Name, q.ExchangeType)
	}
	switch q.Type {
	case "", Classic, Quorum:
	default:
		return fmt.Errorf("queue %q: unknown queue type %q (want classic or quorum)", q.Name, q.Type)
	}
	if t, ok := q.Arguments["x-queue-type"]; ok {
		return fmt.Errorf("queue %q: set Type instead of the x-queue-type argument (%v)", q.Name, t)
	}
	if q.Type == Quorum {
		for _, arg := range []string{"x-max-priority", "x-queue-mode"} {
			if _, ok := q.Arguments[arg]; ok {
				return fmt.Errorf("queue %q: quorum queues do not take %s", q.Name, arg)
			}
		}
	}
	for k, v := range q.Arguments {
		if _, err := HeaderValue(v); err != nil {
			return fmt.Errorf("queue %q: argument %s: %w", q.Name, k, err)
		}
	}
	return nil
}

// DeclareArgs are the queue.declare arguments of q.
func (q Queue) DeclareArgs() map[string]any {
	args := make(map[string]any, len(q.Arguments)+1)
	for k, v := range q.Arguments {
		args[k], _ = HeaderValue(v)
	}
	if q.Type == Quorum {
		args["x-queue-type"] = string(Quorum)
	}
	if len(args) == 0 {
		return nil
	}
	return args
}

// Topology is a fleet's task queues and the rules for the others:
// Celery's task_queues, task_default_queue, task_default_queue_type,
// task_create_missing_queues, task_create_missing_queue_type and
// task_create_missing_queue_exchange_type.
type Topology struct {
	Queues              []Queue
	DefaultQueue        string    // default "celery"
	DefaultQueueType    QueueType // the default queue's type when it is not in Queues; default classic
	CreateMissing       bool      // unknown queue names are allowed (and created as below)
	MissingQueueType    QueueType // default classic
	MissingExchangeType string    // default direct
}

// Validate checks the whole topology.
func (t *Topology) Validate() error {
	var errs []error
	seen := map[string]bool{}
	for _, q := range t.Queues {
		if err := q.Validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[q.Name] {
			errs = append(errs, fmt.Errorf("queue %q is listed twice", q.Name))
		}
		seen[q.Name] = true
	}
	if t.DefaultQueue == "" {
		errs = append(errs, errors.New("default queue is empty"))
	} else if err := CheckShortString("default queue", t.DefaultQueue, 0); err != nil {
		errs = append(errs, err)
	}
	for _, qt := range []QueueType{t.DefaultQueueType, t.MissingQueueType} {
		if qt != "" && qt != Classic && qt != Quorum {
			errs = append(errs, fmt.Errorf("unknown queue type %q (want classic or quorum)", qt))
		}
	}
	switch t.MissingExchangeType {
	case "", Direct, Topic, Fanout, Headers:
	default:
		errs = append(errs, fmt.Errorf("unknown exchange type %q", t.MissingExchangeType))
	}
	return errors.Join(errs...)
}

// ErrUnknownQueue is wrapped when a task names a queue the topology does
// not list and creating missing queues is off.
var ErrUnknownQueue = errors.New("stalk: unknown queue")

// Resolve returns the queue a task sent to name ("" for the default queue)
// goes to, with every default filled in.
func (t *Topology) Resolve(name string) (Queue, error) {
	if name == "" {
		name = t.DefaultQueue
	}
	for _, q := range t.Queues {
		if q.Name == name {
			return q.withDefaults(Classic), nil
		}
	}
	if name == t.DefaultQueue {
		return Queue{Name: name}.withDefaults(orClassic(t.DefaultQueueType)), nil
	}
	if !t.CreateMissing {
		return Queue{}, fmt.Errorf("%w %q: it is not among the configured task queues, and creating missing queues is off", ErrUnknownQueue, name)
	}
	q := Queue{Name: name, ExchangeType: t.MissingExchangeType}
	return q.withDefaults(orClassic(t.MissingQueueType)), nil
}

func orClassic(t QueueType) QueueType {
	if t == "" {
		return Classic
	}
	return t
}

// Route is where a task message is published.
type Route struct {
	Exchange string
	Key      string
	// Queue is the queue the message is meant for, to declare or check
	// first; nil when the caller routed it by exchange or key alone.
	Queue *Queue
}

// RouteFor is where Celery publishes a task for q: the default exchange
// with the queue's name for a direct exchange, else the queue's exchange
// with its routing key. An explicit exchange or routing key (Celery's
// exchange= and routing_key=) wins, and then the queue is not declared.
func RouteFor(q Queue, exchange *string, key string) Route {
	if exchange == nil && key == "" {
		if q.ExchangeType == Direct {
			return Route{Exchange: "", Key: q.Name, Queue: &q}
		}
		return Route{Exchange: q.Exchange, Key: q.RoutingKey, Queue: &q}
	}
	r := Route{Exchange: q.Exchange, Key: q.RoutingKey}
	if q.ExchangeType == Direct {
		r.Exchange, r.Key = "", q.Name
	}
	if exchange != nil {
		r.Exchange = *exchange
	}
	if key != "" {
		r.Key = key
	}
	return r
}

// ---- native delayed delivery --------------------------------------------------

// Native delayed delivery (Celery 5.5+ on RabbitMQ): 28 levels of queues,
// each holding a message for 2^level seconds, route a message by the bits
// of its delay to celery_delayed_delivery, which is bound to each quorum
// queue's exchange.
const (
	DelayedExchange  = "celery_delayed_27"
	DeliveryExchange = "celery_delayed_delivery"
	delayedBits      = 28
	// MaxDelay is the longest delay the levels can hold, in seconds.
	MaxDelay = 1<<delayedBits - 1
)

// DelayedKey is the routing key of a message delayed by seconds to a queue
// bound with routing key key: the 28 binary digits of seconds, each
// followed by a dot, then key (kombu's calculate_routing_key).
func DelayedKey(seconds int64, key string) string {
	var b strings.Builder
	b.Grow(2*delayedBits + len(key))
	for i := delayedBits - 1; i >= 0; i-- {
		if seconds>>uint(i)&1 == 1 {
			b.WriteByte('1')
		} else {
			b.WriteByte('0')
		}
		b.WriteByte('.')
	}
	b.WriteString(key)
	return b.String()
}

// DelayedRoute decides whether a task to q with the given delay goes
// through native delayed delivery, as Celery 5.5+ does: q is a quorum
// queue on a non-direct exchange, and the delay is at least one second
// (Celery truncates it to whole seconds; the eta header keeps the exact
// time, and the worker holds the rest). It returns the route and the
// whole seconds it is delayed by.
func DelayedRoute(q Queue, delaySeconds float64) (Route, int64, bool) {
	if q.Type != Quorum || q.ExchangeType == Direct || q.ExchangeType == "" {
		return Route{}, 0, false
	}
	s := int64(delaySeconds)
	if s < 1 || s > MaxDelay {
		return Route{}, 0, false
	}
	return Route{Exchange: DelayedExchange, Key: DelayedKey(s, q.RoutingKey)}, s, true
}
