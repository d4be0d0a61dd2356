package revoke

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Revoke asks the workers to revoke the tasks with the given ids: Celery's
// revoke command. A worker that meets a revoked task discards it and
// publishes a REVOKED result; with Terminate it also kills the task if it
// is running, with Signal's signal (SIGTERM by default).
//
// Without Wait it returns once the broker has confirmed the broadcast, with
// no replies. With Wait it collects replies (see Wait and Limit). An empty
// id list, an empty id or a bad signal is an error (ErrInvalidArgument)
// before anything is published. Replies that report an error come back
// with a *WorkerError for each, joined; a named Destination that stays
// silent adds an ErrNoReply.
//
// ctx bounds the publish and the collection. It does not undo a revoke
// the broker has confirmed: workers that received it act on it.
func (c *Controller) Revoke(ctx context.Context, ids []string, opts ...Option) ([]Reply, error) {
	args, o, err := revokeCommand(ids, opts)
	if err != nil {
		return nil, err
	}
	return c.call(ctx, "revoke", args, o)
}

// RevokeMessage returns the body of the broadcast Revoke publishes for ids
// and opts, as Celery's pidbox reads it, without the reply ticket that
// Wait adds. It checks its input as Revoke does.
func RevokeMessage(ids []string, opts ...Option) ([]byte, error) {
	args, o, err := revokeCommand(ids, opts)
	if err != nil {
		return nil, err
	}
	return encodeRequest("revoke", args, o.Destination, "", "")
}

func revokeCommand(ids []string, opts []Option) (revokeArgs, Options, error) {
	o, err := resolve(kindRevoke, opts)
	if err != nil {
		return revokeArgs{}, o, fmt.Errorf("stalk: revoke: %w", err)
	}
	if len(ids) == 0 {
		return revokeArgs{}, o, fmt.Errorf("stalk: revoke: %w", invalid("no task ids"))
	}
	for _, id := range ids {
		if id == "" {
			return revokeArgs{}, o, fmt.Errorf("stalk: revoke: %w", invalid("empty task id"))
		}
	}
	sig, err := normalizeSignal(o.Signal)
	if err != nil {
		return revokeArgs{}, o, fmt.Errorf("stalk: revoke: %w", err)
	}
	args := revokeArgs{Terminate: o.Terminate, Signal: sig}
	if len(ids) == 1 {
		args.TaskID = ids[0]
	} else {
		args.TaskID = append([]string(nil), ids...)
	}
	return args, o, nil
}

// RevokeByStampedHeaders asks the workers to revoke every task stamped
// with one of the given header values: Celery's revoke_by_stamped_headers,
// which needs Celery 5.3 or later on the worker. A 5.2 worker answers it
// with an error reply ("KeyError('revoke_by_stamped_headers')"), returned
// as a *WorkerError when Wait is given; without Wait such a worker ignores
// it silently.
//
// headers maps a stamp name to the values to revoke; a single value goes
// out as a string, several as a list. An empty map, an empty stamp name or
// a stamp with no values is an error before anything is published.
func (c *Controller) RevokeByStampedHeaders(ctx context.Context, headers map[string][]string, opts ...Option) ([]Reply, error) {
	const method = "revoke_by_stamped_headers"
	o, err := resolve(kindRevoke, opts)
	if err != nil {
		return nil, fmt.Errorf("stalk: %s: %w", method, err)
	}
	if len(headers) == 0 {
		return nil, fmt.Errorf("stalk: %s: %w", method, invalid("no stamped headers"))
	}
	stamps := make(orderedStamps, len(headers))
	for k, vs := range headers {
		if k == "" {
			return nil, fmt.Errorf("stalk: %s: %w", method, invalid("empty stamp name"))
		}
		if len(vs) == 0 {
			return nil, fmt.Errorf("stalk: %s: %w", method, invalid("stamp %q has no values", k))
		}
		stamps[k] = append([]string(nil), vs...)
	}
	sig, err := normalizeSignal(o.Signal)
	if err != nil {
		return nil, fmt.Errorf("stalk: %s: %w", method, err)
	}
	return c.call(ctx, method, stampArgs{Headers: stamps, Terminate: o.Terminate, Signal: sig}, o)
}

// Ping asks the workers to answer, and returns one reply per worker that
// did within the idle timeout (default 1 s; set it with Wait). OK is
// "pong". With no reply at all the error wraps ErrNoReply; with
// Destination, each named worker that stayed silent adds one, and the
// replies that did arrive are returned too.
func (c *Controller) Ping(ctx context.Context, opts ...Option) ([]Reply, error) {
	o, err := resolve(kindQuery, opts)
	if err != nil {
		return nil, fmt.Errorf("stalk: ping: %w", err)
	}
	return c.call(ctx, "ping", nil, o)
}

// Inspect sends any remote-control or inspect command, e.g. "stats",
// "registered", "query_task" with {"ids": [...]}, and returns the raw
// replies (Reply.Value). It always collects replies, with an idle timeout
// of 1 s unless Wait sets another. A command the workers do not know comes
// back as a *WorkerError per worker. args may be nil.
func (c *Controller) Inspect(ctx context.Context, method string, args map[string]any, opts ...Option) ([]Reply, error) {
	o, err := resolve(kindQuery, opts)
	if err != nil {
		return nil, fmt.Errorf("stalk: %s: %w", method, err)
	}
	if method == "" {
		return nil, fmt.Errorf("stalk: inspect: %w", invalid("empty method"))
	}
	var a any
	if args != nil {
		a = args
	}
	return c.call(ctx, method, a, o)
}

// TaskInfo describes a task a worker is running, as inspect active
// reports it.
type TaskInfo struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Args         json.RawMessage `json:"args"`   // a list, or its repr string on some versions
	Kwargs       json.RawMessage `json:"kwargs"` // an object, or its repr string
	Type         string          `json:"type"`
	Hostname     string          `json:"hostname"`
	TimeStart    *float64        `json:"time_start"` // epoch seconds; nil before the pool picked it up
	Acknowledged bool            `json:"acknowledged"`
	DeliveryInfo DeliveryInfo    `json:"delivery_info"`
	WorkerPID    *int            `json:"worker_pid"`
}

// Started returns TimeStart as a time, or the zero time.
func (t TaskInfo) Started() time.Time {
	if t.TimeStart == nil {
		return time.Time{}
	}
	return time.Unix(0, int64(*t.TimeStart*1e9))
}

// DeliveryInfo is where a running task's message came from.
type DeliveryInfo struct {
	Exchange    string `json:"exchange"`
	RoutingKey  string `json:"routing_key"`
	Priority    *int   `json:"priority"`
	Redelivered bool   `json:"redelivered"`
}

// Active returns, per worker, the tasks it is running now (inspect
// active). Errors are as for Inspect; the map holds every worker whose
// reply decoded.
func (c *Controller) Active(ctx context.Context, opts ...Option) (map[string][]TaskInfo, error) {
	return inspectAs[[]TaskInfo](ctx, c, "active", map[string]any{"safe": nil}, opts)
}

// RevokedIDs returns, per worker, the ids in its revoked set (inspect
// revoked). A worker forgets them when it restarts, unless it runs with
// --statedb.
func (c *Controller) RevokedIDs(ctx context.Context, opts ...Option) (map[string][]string, error) {
	return inspectAs[[]string](ctx, c, "revoked", nil, opts)
}

// inspectAs runs an inspect command and decodes each worker's reply as T.
// Workers that answered with an error are left out (Inspect reports them);
// replies that do not decode are reported too.
func inspectAs[T any](ctx context.Context, c *Controller, method string, args map[string]any, opts []Option) (map[string]T, error) {
	replies, err := c.Inspect(ctx, method, args, opts...)
	out := make(map[string]T, len(replies))
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range replies {
		if r.Error != "" {
			continue
		}
		var v T
		if uerr := json.Unmarshal(r.Value, &v); uerr != nil {
			errs = append(errs, fmt.Errorf("stalk: %s: worker %s: %w: %w", method, r.Worker, errBadReply, uerr))
			continue
		}
		out[r.Worker] = v
	}
	return out, errors.Join(errs...)
}

// call publishes one command and, when o.Reply, collects its replies.
func (c *Controller) call(ctx context.Context, method string, args any, o Options) ([]Reply, error) {
	if c == nil {
		return nil, fmt.Errorf("stalk: %s: nil *revoke.Controller", method)
	}
	if c.life.Err() != nil {
		return nil, ErrClosed
	}
	// Every wait below also ends at Close.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.life, cancel)()
	var ticket string
	var col *collector
	if o.Reply {
		if err := c.ensureConsumer(ctx); err != nil {
			return nil, fmt.Errorf("stalk: %s: %w", method, c.closedOr(err))
		}
		ticket = uuid.NewString()
		col = c.register(ticket)
		defer c.unregister(ticket)
	}
	body, err := encodeRequest(method, args, o.Destination, ticket, c.replyKey())
	if err != nil {
		return nil, err
	}
	var expires time.Duration
	if o.Reply {
		expires = o.Timeout
	}
	if err := c.publish(ctx, body, expires); err != nil {
		if o.Reply && errors.Is(err, ErrNoWorker) {
			return nil, fmt.Errorf("stalk: %s: %w: %w", method, ErrNoReply, trimPrefix(err))
		}
		return nil, fmt.Errorf("stalk: %s: %w", method, trimPrefix(err))
	}
	c.log.Debug().Str("method", method).Str("ticket", ticket).Strs("destination", o.Destination).Msg("control command sent")
	if !o.Reply {
		return nil, nil
	}
	replies, err := c.collect(ctx, method, col, o)
	return replies, outcome(method, replies, o, err)
}

// collect gathers replies until o.Limit is reached, no reply has come for
// o.Timeout, or ctx ends. A worker's second reply to the same ticket (a
// republished command) is dropped.
func (c *Controller) collect(ctx context.Context, method string, col *collector, o Options) ([]Reply, error) {
	idle := time.NewTimer(o.Timeout)
	defer idle.Stop()
	seen := make(map[string]bool)
	var out []Reply
	for {
		if batch := col.take(); len(batch) > 0 {
			for _, r := range batch {
				if seen[r.Worker] {
					continue
				}
				seen[r.Worker] = true
				out = append(out, r)
				if o.Limit > 0 && len(out) >= o.Limit {
					return out, nil
				}
			}
			idle.Reset(o.Timeout)
		}
		select {
		case <-col.notify:
		case <-idle.C:
			return out, nil
		case <-ctx.Done():
			if c.life.Err() != nil {
				return out, ErrClosed
			}
			return out, fmt.Errorf("stalk: %s: collecting replies: %w", method, ctx.Err())
		case <-c.life.Done():
			return out, ErrClosed
		}
	}
}

// outcome turns the replies into the command's error: one *WorkerError per
// error reply, one ErrNoReply per silent destination (or one when nobody
// answered a broadcast), and err from the collection itself.
func outcome(method string, replies []Reply, o Options, err error) error {
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range replies {
		if r.Error != "" {
			errs = append(errs, &WorkerError{Method: method, Worker: r.Worker, Message: r.Error})
		}
	}
	if err == nil {
		if len(o.Destination) > 0 && len(replies) < o.Limit {
			got := make(map[string]bool, len(replies))
			for _, r := range replies {
				got[r.Worker] = true
			}
			var missing []string
			for _, d := range o.Destination {
				if !got[d] {
					missing = append(missing, d)
				}
			}
			sort.Strings(missing)
			if len(missing) > 0 {
				errs = append(errs, fmt.Errorf("%w to %s within %s: %s", ErrNoReply, method, o.Timeout, strings.Join(missing, ", ")))
			}
		} else if len(replies) == 0 {
			errs = append(errs, fmt.Errorf("%w to %s: none answered within %s", ErrNoReply, method, o.Timeout))
		}
	}
	return errors.Join(errs...)
}
