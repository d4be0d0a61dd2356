package celery

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"time"
)

// Message is a built task message, ready to publish: protocol v2 headers,
// properties and body. Header values are AMQP field values (string,
// bool, int32, int64, float64, nil, []any, map[string]any for tables).
type Message struct {
	ID            string
	Name          string
	Headers       map[string]any
	Body          []byte
	Priority      uint8
	Expiration    string // AMQP expiration in ms, "" for none
	CorrelationID string
	ReplyTo       string

	// Resolved facts the sender needs.
	ETA      time.Time // when the worker may run it; zero for now
	Expires  time.Time
	Built    time.Time
	Args     []any
	Kwargs   map[string]any
	ArgsRepr string
	KwRepr   string
}

// Origin is what Celery clients put in the origin header:
// "gen<pid>@<host>".
var Origin = func() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	return fmt.Sprintf("gen%d@%s", os.Getpid(), h)
}()

// reservedHeaders are the headers Celery's protocol v2 sets itself.
var reservedHeaders = map[string]struct{}{
	"lang": {}, "task": {}, "id": {}, "shadow": {}, "eta": {}, "expires": {}, "group": {},
	"group_index": {}, "retries": {}, "timelimit": {}, "root_id": {}, "parent_id": {},
	"argsrepr": {}, "kwargsrepr": {}, "origin": {}, "ignore_result": {},
	"replaced_task_nesting": {}, "stamped_headers": {}, "stamps": {},
}

// IsoTime formats t as Python's datetime.isoformat() of an aware UTC
// time: 2026-12-02T02:43:42.699366+00:00.
func IsoTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000") + "+00:00"
}

// Shared header values: a message's headers are read, never changed, once
// built (a stamp or a header of the user's replaces the value, not its
// contents). They save the hot path an allocation each.
var (
	originValue  any = Origin
	noTimeLimit      = []any{nil, nil}
	noStamps         = map[string]any{}
	builtHeaders     = 19 // the headers Build always writes
)

// Build validates c and builds the task message for task name. replyTo is
// the reply queue unless c.ReplyTo overrides it ("" for no reply). Nothing
// is published; a bad argument is reported here.
func Build(name string, c *Call, replyTo string) (*Message, error) {
	if err := c.Validate(name); err != nil {
		return nil, err
	}
	if c.TaskID == "" {
		return nil, fmt.Errorf("task id is empty")
	}
	if c.ReplyTo != nil {
		replyTo = *c.ReplyTo
	}
	if err := CheckShortString("reply_to", replyTo, 0); err != nil {
		return nil, err
	}
	now := c.now()
	eta, expires := c.eta(now), c.expires(now)
	args := c.Args
	if args == nil {
		args = []any{}
	}
	kwargs := c.Kwargs
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	body, err := appendBody(make([]byte, 0, 128), args, kwargs, c.Embed)
	if err != nil {
		return nil, fmt.Errorf("task %s: arguments cannot be encoded as JSON: %w", name, err)
	}
	root := c.RootID
	if root == "" {
		root = c.TaskID
	}
	argsRepr, kwRepr := ArgsRepr(args), KwargsRepr(kwargs)
	h := make(map[string]any, builtHeaders+len(c.Headers))
	h["lang"] = "go"
	h["task"] = name
	h["id"] = c.TaskID
	h["shadow"] = nil
	h["eta"] = nil
	h["expires"] = nil
	h["group"] = nil
	h["group_index"] = nil
	h["retries"] = int32(0)
	if c.HardLimit == nil && c.SoftLimit == nil {
		h["timelimit"] = noTimeLimit
	} else {
		h["timelimit"] = []any{optFloat(c.HardLimit), optFloat(c.SoftLimit)}
	}
	h["root_id"] = root
	h["parent_id"] = nil
	h["argsrepr"] = argsRepr
	h["kwargsrepr"] = kwRepr
	h["origin"] = originValue
	h["ignore_result"] = c.Ignore
	h["replaced_task_nesting"] = int32(0)
	h["stamped_headers"] = nil
	h["stamps"] = noStamps
	if c.Shadow != "" {
		h["shadow"] = c.Shadow
	}
	if !eta.IsZero() {
		h["eta"] = IsoTime(eta)
	}
	if !expires.IsZero() {
		h["expires"] = IsoTime(expires)
	}
	if c.GroupID != "" {
		h["group"] = c.GroupID
		if c.GroupIndex != nil {
			h["group_index"] = int32(*c.GroupIndex)
		}
	}
	if c.ParentID != "" {
		h["parent_id"] = c.ParentID
	}
	if len(c.Stamps) > 0 {
		names := sortedKeys(c.Stamps)
		stamped := make([]any, len(names))
		stamps := make(map[string]any, len(names))
		for i, k := range names {
			stamped[i] = k
			v, err := HeaderValue(c.Stamps[k])
			if err != nil {
				return nil, fmt.Errorf("stamp %q: %w", k, err)
			}
			stamps[k] = v
		}
		h["stamped_headers"], h["stamps"] = stamped, stamps
	}
	for k, v := range c.Headers {
		if err := CheckShortString("header name", k, 0); err != nil {
			return nil, err
		}
		if _, own := reservedHeaders[k]; own {
			return nil, fmt.Errorf("header %q is Celery's own and cannot be overridden", k)
		}
		tv, err := HeaderValue(v)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", k, err)
		}
		h[k] = tv
	}
	m := &Message{
		ID: c.TaskID, Name: name, Headers: h, Body: body, CorrelationID: c.TaskID, ReplyTo: replyTo,
		ETA: eta, Expires: expires, Built: now, Args: args, Kwargs: kwargs, ArgsRepr: argsRepr, KwRepr: kwRepr,
	}
	if c.Priority != nil {
		m.Priority = uint8(*c.Priority)
	}
	if !expires.IsZero() {
		ms := max(expires.Sub(now).Milliseconds(), 0)
		m.Expiration = strconv.FormatInt(ms, 10)
	}
	return m, nil
}

func appendBody(dst []byte, args []any, kwargs map[string]any, e Embed) ([]byte, error) {
	var err error
	dst = append(dst, '[')
	if dst, err = AppendJSON(dst, args); err != nil {
		return nil, err
	}
	dst = append(dst, ',')
	if dst, err = AppendJSON(dst, kwargs); err != nil {
		return nil, err
	}
	dst = append(dst, ',')
	if dst, err = e.appendJSON(dst); err != nil {
		return nil, err
	}
	return append(dst, ']'), nil
}

func optFloat(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}

// HeaderValue converts a user header value into an AMQP field value that
// py-amqp decodes as the matching Python type: strings as strings (never
// bytes: py-amqp reads a byte array as bytes), integers sized, maps as
// tables.
func HeaderValue(v any) (any, error) {
	switch t := v.(type) {
	case nil, bool, string, float32, float64, int8, int16, int32, int64, uint8, uint16, uint32, time.Time:
		return t, nil
	case int:
		if t >= math.MinInt32 && t <= math.MaxInt32 {
			return int32(t), nil
		}
		return int64(t), nil
	case uint:
		if uint64(t) > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d does not fit in a signed 64-bit header", t)
		}
		return int64(t), nil
	case uint64:
		if t > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d does not fit in a signed 64-bit header", t)
		}
		return int64(t), nil
	case []byte:
		return string(t), nil
	case []string:
		out := make([]any, len(t))
		for i, s := range t {
			out[i] = s
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			y, err := HeaderValue(x)
			if err != nil {
				return nil, err
			}
			out[i] = y
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			y, err := HeaderValue(x)
			if err != nil {
				return nil, err
			}
			out[k] = y
		}
		return out, nil
	case map[string]string:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[k] = x
		}
		return out, nil
	}
	return nil, fmt.Errorf("type %T cannot be sent as an AMQP header", v)
}
