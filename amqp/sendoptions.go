package amqp

import (
	"maps"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/internal/celery"
)

// SendOption configures one task: for Send, for a signature in a canvas,
// or, as workflow options, for a whole chain or group.
type SendOption = celery.Option

// Args sets the positional arguments. Default: none. Floats are sent as
// JSON floats that a Python worker reads as float (2.0 stays 2.0), integers
// exactly, however large.
func Args(args ...any) SendOption { return func(c *celery.Call) { c.Args = args } }

// Kwargs sets the keyword arguments. Default: none.
func Kwargs(kwargs map[string]any) SendOption {
	return func(c *celery.Call) { c.Kwargs = kwargs }
}

// Queue routes the task to the named queue, resolved through the client's
// topology (WithTaskQueues, WithDefaultQueueType, WithCreateMissingQueues).
// Default: the client's default queue, "celery" unless WithDefaultQueue
// says otherwise.
func Queue(name string) SendOption { return func(c *celery.Call) { c.Queue = name } }

// RoutingKey publishes with this routing key instead of the queue's
// (Celery's routing_key=). The queue is then not declared: the routing is
// the caller's.
func RoutingKey(key string) SendOption { return func(c *celery.Call) { c.RoutingKey = key } }

// Exchange publishes to the named exchange instead of the queue's
// (Celery's exchange=). The exchange must exist, and the queue is then not
// declared. "" is the default exchange.
func Exchange(name string) SendOption { return func(c *celery.Call) { c.Exchange = &name } }

// TaskID sets the task id. Default: a new random UUID.
func TaskID(id string) SendOption { return func(c *celery.Call) { c.TaskID = id } }

// Countdown delays execution by d (the eta header is now+d). Must not be
// negative; cannot be combined with ETA.
func Countdown(d time.Duration) SendOption { return func(c *celery.Call) { c.Countdown = &d } }

// ETA sets the earliest execution time.
func ETA(t time.Time) SendOption { return func(c *celery.Call) { c.ETA = t } }

// Expires makes the worker revoke the task if it has not started within d
// of being sent. It also sets the AMQP expiration property, as Celery 5.2+
// does.
func Expires(d time.Duration) SendOption { return func(c *celery.Call) { c.ExpiresIn = &d } }

// ExpiresAt is Expires with an absolute time.
func ExpiresAt(t time.Time) SendOption { return func(c *celery.Call) { c.Expires = t } }

// Priority sets the message priority, 0 to 255. Default: 0.
func Priority(p int) SendOption { return func(c *celery.Call) { c.Priority = &p } }

// TimeLimit sets the hard time limit, in the worker's seconds.
func TimeLimit(d time.Duration) SendOption {
	return func(c *celery.Call) { s := d.Seconds(); c.HardLimit = &s }
}

// SoftTimeLimit sets the soft time limit.
func SoftTimeLimit(d time.Duration) SendOption {
	return func(c *celery.Call) { s := d.Seconds(); c.SoftLimit = &s }
}

// IgnoreResult asks the worker not to store the result, and publishes the
// task with an empty reply_to so that no state at all comes back. Get on
// the returned result returns nil at once, as in Celery.
func IgnoreResult() SendOption { return func(c *celery.Call) { c.Ignore = true } }

// Shadow sets the display name workers log instead of the task name.
func Shadow(name string) SendOption { return func(c *celery.Call) { c.Shadow = name } }

// Headers adds extra message headers. They cannot replace Celery's own. A
// Celery worker makes each one an attribute of task.request.
func Headers(h map[string]any) SendOption {
	return func(c *celery.Call) {
		if c.Headers == nil {
			c.Headers = map[string]any{}
		}
		for k, v := range h {
			c.Headers[k] = plainValue(v)
		}
	}
}

// Stamp stamps the task with header name = value, as Celery 5.3+ stamping
// does: name goes into the stamped_headers list and the stamps table, so
// that revoke_by_stamped_headers (AsyncResult.RevokeByStampedHeaders,
// revoke.Controller.RevokeByStampedHeaders) can match it. value is a
// string or a list of strings. In a canvas, a stamp on the chain or group
// stamps every step.
func Stamp(name string, value any) SendOption {
	return func(c *celery.Call) {
		c.Stamps = maps.Clone(c.Stamps)
		if c.Stamps == nil {
			c.Stamps = map[string]any{}
		}
		c.Stamps[name] = plainValue(value)
	}
}

// ParentID sets the id of the task that sent this one.
func ParentID(id string) SendOption { return func(c *celery.Call) { c.ParentID = id } }

// RootID sets the id of the workflow's first task. Default: the task's own id.
func RootID(id string) SendOption { return func(c *celery.Call) { c.RootID = id } }

// Group marks the task as member index of group id.
func Group(id string, index int) SendOption {
	return func(c *celery.Call) { c.GroupID = id; c.GroupIndex = &index }
}

// ReplyTo overrides the reply queue name the worker publishes states to.
// The client does not consume it: the result is for someone else.
func ReplyTo(queue string) SendOption { return func(c *celery.Call) { c.ReplyTo = &queue } }

// plainValue turns amqp091 tables into plain maps, recursively.
func plainValue(v any) any {
	switch t := v.(type) {
	case amqp091.Table:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[k] = plainValue(x)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = plainValue(x)
		}
		return out
	}
	return v
}

// amqpTable turns plain maps into amqp091 tables, recursively, for the
// wire. It converts m itself in place (an amqp091.Table is a
// map[string]any), so m must be the caller's own, fresh map, not to be
// used afterwards; the maps and slices nested in it may be the user's, and
// are copied where they hold a map, never changed.
func amqpTable(m map[string]any) amqp091.Table {
	if m == nil {
		return nil
	}
	for k, v := range m {
		if nv, changed := amqpValue(v); changed {
			m[k] = nv
		}
	}
	return amqp091.Table(m)
}

// amqpValue returns v with its maps as amqp091 tables, copying what it
// changes, and whether it changed anything.
func amqpValue(v any) (any, bool) {
	switch t := v.(type) {
	case map[string]any:
		if len(t) == 0 {
			return amqp091.Table(nil), true // the same empty table on the wire
		}
		out := make(amqp091.Table, len(t))
		for k, x := range t {
			out[k], _ = amqpValue(x)
		}
		return out, true
	case []any:
		var out []any
		for i, x := range t {
			nx, changed := amqpValue(x)
			if changed && out == nil {
				out = append([]any(nil), t...)
			}
			if out != nil {
				out[i] = nx
			}
		}
		if out == nil {
			return v, false
		}
		return out, true
	}
	return v, false
}

// TaskMessage is a decoded Celery protocol v2 task message, as a worker
// reads it.
type TaskMessage = celery.TaskMessage

// DecodeTask decodes a protocol v2 task message, as a worker reads it: Go
// programs that consume tasks (test workers, proxies, audit tools) can
// read what stalk or Python published. Only JSON bodies are accepted; the
// headers must carry "task" and "id", and the body must be the 3-element
// array [args, kwargs, embed]. Errors wrap result.ErrMalformed.
func DecodeTask(headers amqp091.Table, contentType, contentEncoding string, body []byte) (*TaskMessage, error) {
	h, _ := plainValue(headers).(map[string]any)
	return celery.DecodeTask(h, contentType, contentEncoding, body)
}
