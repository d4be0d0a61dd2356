package amqp

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/internal/broker"
)

// SendOption configures one Send.
type SendOption func(*sendConfig)

type sendConfig struct {
	args       []any
	kwargs     map[string]any
	queue      string
	routingKey string
	exchange   *string
	taskID     string
	countdown  *time.Duration
	eta        time.Time
	expires    time.Time
	priority   *int
	hardLimit  *float64
	softLimit  *float64
	ignore     bool
	shadow     string
	headers    map[string]any
	parentID   string
	rootID     string
	groupID    string
	groupIndex *int
	replyTo    *string
	embed      Embed
	now        func() time.Time
}

// Args sets the positional arguments. Default: none.
func Args(args ...any) SendOption { return func(c *sendConfig) { c.args = args } }

// Kwargs sets the keyword arguments. Default: none.
func Kwargs(kwargs map[string]any) SendOption { return func(c *sendConfig) { c.kwargs = kwargs } }

// Queue routes the task to the named queue, declaring it (and its direct
// exchange and binding) as Celery does. Default: the client's default
// queue, "celery" unless WithDefaultQueue says otherwise.
func Queue(name string) SendOption { return func(c *sendConfig) { c.queue = name } }

// RoutingKey overrides the routing key. Default: the queue name.
func RoutingKey(key string) SendOption { return func(c *sendConfig) { c.routingKey = key } }

// Exchange publishes to the named exchange instead of the default exchange.
// The exchange must exist. Default: "", the default exchange, as Celery
// does for direct routes.
func Exchange(name string) SendOption { return func(c *sendConfig) { c.exchange = &name } }

// TaskID sets the task id. Default: a new random UUID.
func TaskID(id string) SendOption { return func(c *sendConfig) { c.taskID = id } }

// Countdown delays execution by d (the eta header is now+d). Must not be
// negative; cannot be combined with ETA.
func Countdown(d time.Duration) SendOption { return func(c *sendConfig) { c.countdown = &d } }

// ETA sets the earliest execution time.
func ETA(t time.Time) SendOption { return func(c *sendConfig) { c.eta = t } }

// Expires makes the worker revoke the task if it has not started within d
// from now. It also sets the AMQP expiration property, as Celery 5.2+ does.
func Expires(d time.Duration) SendOption {
	return func(c *sendConfig) { c.expires = c.clock().Add(d) }
}

// ExpiresAt is Expires with an absolute time.
func ExpiresAt(t time.Time) SendOption { return func(c *sendConfig) { c.expires = t } }

// Priority sets the message priority, 0 to 255. Default: 0.
func Priority(p int) SendOption { return func(c *sendConfig) { c.priority = &p } }

// TimeLimit sets the hard time limit, in the worker's seconds.
func TimeLimit(d time.Duration) SendOption {
	return func(c *sendConfig) { s := d.Seconds(); c.hardLimit = &s }
}

// SoftTimeLimit sets the soft time limit.
func SoftTimeLimit(d time.Duration) SendOption {
	return func(c *sendConfig) { s := d.Seconds(); c.softLimit = &s }
}

// IgnoreResult asks the worker not to store the result, and publishes the
// task with an empty reply_to so that no state at all comes back. Get on
// the returned result returns nil at once, as in Celery.
func IgnoreResult() SendOption { return func(c *sendConfig) { c.ignore = true } }

// Shadow sets the display name workers log instead of the task name.
func Shadow(name string) SendOption { return func(c *sendConfig) { c.shadow = name } }

// Headers adds extra message headers. They cannot replace Celery's own.
func Headers(h map[string]any) SendOption {
	return func(c *sendConfig) {
		if c.headers == nil {
			c.headers = map[string]any{}
		}
		for k, v := range h {
			c.headers[k] = v
		}
	}
}

// ParentID and RootID set the task's place in a workflow.
func ParentID(id string) SendOption { return func(c *sendConfig) { c.parentID = id } }

// RootID sets the id of the workflow's first task. Default: the task's own id.
func RootID(id string) SendOption { return func(c *sendConfig) { c.rootID = id } }

// Group marks the task as member index of group id.
func Group(id string, index int) SendOption {
	return func(c *sendConfig) { c.groupID = id; c.groupIndex = &index }
}

// WithEmbed sets the body's embed object (callbacks, errbacks, chain,
// chord). The canvas helpers use it.
func WithEmbed(e Embed) SendOption { return func(c *sendConfig) { c.embed = e } }

// ReplyTo overrides the reply queue name the worker publishes states to.
func ReplyTo(queue string) SendOption { return func(c *sendConfig) { c.replyTo = &queue } }

func (c *sendConfig) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// Signature is a task call embedded in another task's message: a chain
// step, a callback or an errback. It encodes as Celery's signature dict.
type Signature struct {
	Task      string         `json:"task"`
	Args      []any          `json:"args"`
	Kwargs    map[string]any `json:"kwargs"`
	Options   map[string]any `json:"options"`
	Immutable bool           `json:"immutable"`
	// SubtaskType is "chain", "group" or "" for a plain signature.
	SubtaskType *string `json:"subtask_type"`
}

// MarshalJSON writes Celery's key order and never null for args, kwargs
// and options.
func (s Signature) MarshalJSON() ([]byte, error) {
	type wire struct {
		Task        string         `json:"task"`
		Args        []any          `json:"args"`
		Kwargs      map[string]any `json:"kwargs"`
		Options     map[string]any `json:"options"`
		SubtaskType *string        `json:"subtask_type"`
		Immutable   bool           `json:"immutable"`
	}
	w := wire{s.Task, s.Args, s.Kwargs, s.Options, s.SubtaskType, s.Immutable}
	if w.Args == nil {
		w.Args = []any{}
	}
	if w.Kwargs == nil {
		w.Kwargs = map[string]any{}
	}
	if w.Options == nil {
		w.Options = map[string]any{}
	}
	return json.Marshal(w)
}

// Embed is the third element of a protocol v2 body.
type Embed struct {
	Callbacks []Signature `json:"callbacks"`
	Errbacks  []Signature `json:"errbacks"`
	// Chain holds the remaining steps reversed: the worker pops the last.
	Chain []Signature `json:"chain"`
	Chord *Signature  `json:"chord"`
}

// taskMessage is a fully built task message.
type taskMessage struct {
	id         string
	exchange   string
	routingKey string
	queue      string // queue to declare, "" for none
	pub        amqp091.Publishing
	cfg        *sendConfig
}

var origin = func() string {
	h, err := os.Hostname()
	if err != nil {
		h = "localhost"
	}
	return fmt.Sprintf("gen%d@%s", os.Getpid(), h)
}()

// isoTime formats t as Python's datetime.isoformat() of an aware UTC time.
func isoTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000") + "+00:00"
}

// buildTask validates the call and builds the protocol v2 message. Nothing
// is published; a bad argument is reported here.
func buildTask(name string, cfg *sendConfig, defaultQueue string) (*taskMessage, error) {
	if strings.TrimSpace(name) == "" {
		return nil, errors.New("stalk: task name is empty")
	}
	if cfg.taskID == "" {
		return nil, errors.New("stalk: task id is empty")
	}
	var exchangeName string
	if cfg.exchange != nil {
		exchangeName = *cfg.exchange
	}
	var replyTo string
	if cfg.replyTo != nil {
		replyTo = *cfg.replyTo
	}
	for _, f := range []struct{ what, v string }{
		{"task id", cfg.taskID}, {"queue", cfg.queue}, {"routing key", cfg.routingKey},
		{"exchange", exchangeName}, {"reply_to", replyTo},
	} {
		if err := broker.CheckShortString(f.what, f.v, 0); err != nil {
			return nil, fmt.Errorf("stalk: %w", err)
		}
	}
	if cfg.countdown != nil {
		if *cfg.countdown < 0 {
			return nil, fmt.Errorf("stalk: negative countdown %s", *cfg.countdown)
		}
		if !cfg.eta.IsZero() {
			return nil, errors.New("stalk: set Countdown or ETA, not both")
		}
	}
	if cfg.priority != nil && (*cfg.priority < 0 || *cfg.priority > 255) {
		return nil, fmt.Errorf("stalk: priority %d is outside 0..255", *cfg.priority)
	}
	for _, l := range []*float64{cfg.hardLimit, cfg.softLimit} {
		if l != nil && (*l < 0 || math.IsNaN(*l)) {
			return nil, fmt.Errorf("stalk: negative time limit %v", *l)
		}
	}
	now := cfg.clock()
	eta := cfg.eta
	if cfg.countdown != nil {
		eta = now.Add(*cfg.countdown)
	}
	args := cfg.args
	if args == nil {
		args = []any{}
	}
	kwargs := cfg.kwargs
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	body, err := json.Marshal([]any{args, kwargs, cfg.embed})
	if err != nil {
		return nil, fmt.Errorf("stalk: task %s: arguments cannot be encoded as JSON: %w", name, err)
	}
	queue := cfg.queue
	if queue == "" {
		queue = defaultQueue
	}
	rk := cfg.routingKey
	if rk == "" {
		rk = queue
	}
	exchange := ""
	if cfg.exchange != nil {
		exchange = *cfg.exchange
	}
	root := cfg.rootID
	if root == "" {
		root = cfg.taskID
	}
	h := amqp091.Table{
		"lang":          "go",
		"task":          name,
		"id":            cfg.taskID,
		"shadow":        nil,
		"eta":           nil,
		"expires":       nil,
		"group":         nil,
		"group_index":   nil,
		"retries":       int32(0),
		"timelimit":     []any{optFloat(cfg.hardLimit), optFloat(cfg.softLimit)},
		"root_id":       root,
		"parent_id":     nil,
		"argsrepr":      argsRepr(args),
		"kwargsrepr":    kwargsRepr(kwargs),
		"origin":        origin,
		"ignore_result": cfg.ignore,
	}
	if cfg.shadow != "" {
		h["shadow"] = cfg.shadow
	}
	if !eta.IsZero() {
		h["eta"] = isoTime(eta)
	}
	if !cfg.expires.IsZero() {
		h["expires"] = isoTime(cfg.expires)
	}
	if cfg.groupID != "" {
		h["group"] = cfg.groupID
		if cfg.groupIndex != nil {
			h["group_index"] = int32(*cfg.groupIndex)
		}
	}
	if cfg.parentID != "" {
		h["parent_id"] = cfg.parentID
	}
	for k, v := range cfg.headers {
		if err := broker.CheckShortString("header name", k, 0); err != nil {
			return nil, fmt.Errorf("stalk: %w", err)
		}
		if _, own := h[k]; own {
			return nil, fmt.Errorf("stalk: header %q is Celery's own and cannot be overridden", k)
		}
		tv, err := tableValue(v)
		if err != nil {
			return nil, fmt.Errorf("stalk: header %q: %w", k, err)
		}
		h[k] = tv
	}
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("stalk: headers: %w", err)
	}
	pub := amqp091.Publishing{
		Headers:         h,
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp091.Persistent,
		CorrelationId:   cfg.taskID,
		Body:            body,
	}
	if cfg.priority != nil {
		pub.Priority = uint8(*cfg.priority)
	}
	if !cfg.expires.IsZero() {
		ms := cfg.expires.Sub(now).Milliseconds()
		if ms < 0 {
			ms = 0
		}
		pub.Expiration = strconv.FormatInt(ms, 10)
	}
	declare := queue
	if exchange != "" || cfg.routingKey != "" && cfg.routingKey != queue {
		declare = ""
	}
	return &taskMessage{id: cfg.taskID, exchange: exchange, routingKey: rk, queue: declare, pub: pub, cfg: cfg}, nil
}

func optFloat(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}

// tableValue converts a user header value into a type amqp091 encodes the
// way py-amqp decodes it: strings as strings, ints sized, maps as tables.
func tableValue(v any) (any, error) {
	switch t := v.(type) {
	case nil, bool, string, float32, float64, int8, int16, int32, int64, uint8, uint16, uint32, time.Time, amqp091.Decimal:
		return t, nil
	case int:
		if t >= math.MinInt32 && t <= math.MaxInt32 {
			return int32(t), nil
		}
		return int64(t), nil
	case uint:
		return int64(t), nil
	case uint64:
		if t > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d does not fit in a signed 64-bit header", t)
		}
		return int64(t), nil
	case []byte:
		// py-amqp would decode a byte array as bytes; send text.
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
			y, err := tableValue(x)
			if err != nil {
				return nil, err
			}
			out[i] = y
		}
		return out, nil
	case map[string]any:
		out := amqp091.Table{}
		for k, x := range t {
			y, err := tableValue(x)
			if err != nil {
				return nil, err
			}
			out[k] = y
		}
		return out, nil
	case amqp091.Table:
		return tableValue(map[string]any(t))
	case map[string]string:
		out := amqp091.Table{}
		for k, x := range t {
			out[k] = x
		}
		return out, nil
	}
	return nil, fmt.Errorf("type %T cannot be sent as an AMQP header", v)
}
