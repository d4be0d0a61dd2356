package celery

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Call is one task call: everything a send option can set. The zero value
// is a call with no arguments to the default queue.
type Call struct {
	Args       []any
	Kwargs     map[string]any
	Queue      string  // "" means the default queue
	RoutingKey string  // overrides the queue's routing key
	Exchange   *string // overrides the queue's exchange
	TaskID     string
	Countdown  *time.Duration
	ETA        time.Time
	Expires    time.Time      // absolute
	ExpiresIn  *time.Duration // relative to the moment the message is built
	Priority   *int
	HardLimit  *float64 // seconds
	SoftLimit  *float64 // seconds
	Ignore     bool     // ignore_result
	Shadow     string
	Headers    map[string]any
	Stamps     map[string]any // stamped_headers and stamps (Celery 5.3+)
	ParentID   string
	RootID     string
	GroupID    string
	GroupIndex *int
	ReplyTo    *string
	Embed      Embed
	Now        func() time.Time // for tests; default time.Now
}

// Option sets part of a Call.
type Option func(*Call)

// Apply runs opts on c, in order.
func (c *Call) Apply(opts []Option) *Call {
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c
}

// Clone returns a copy of c whose maps can be changed without changing c.
func (c *Call) Clone() *Call {
	d := *c
	d.Headers = maps.Clone(c.Headers)
	d.Stamps = maps.Clone(c.Stamps)
	return &d
}

func (c *Call) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Validate reports bad input before anything is built or published.
func (c *Call) Validate(name string) error {
	if strings.TrimSpace(name) == "" {
		return errors.New("task name is empty")
	}
	var exchange, replyTo string
	if c.Exchange != nil {
		exchange = *c.Exchange
	}
	if c.ReplyTo != nil {
		replyTo = *c.ReplyTo
	}
	for _, f := range []struct{ what, v string }{
		{"task name", name}, {"task id", c.TaskID}, {"queue", c.Queue}, {"routing key", c.RoutingKey},
		{"exchange", exchange}, {"reply_to", replyTo}, {"parent id", c.ParentID}, {"root id", c.RootID}, {"group id", c.GroupID},
	} {
		if err := CheckShortString(f.what, f.v, 0); err != nil {
			return err
		}
	}
	if c.Countdown != nil {
		if *c.Countdown < 0 {
			return fmt.Errorf("negative countdown %s", *c.Countdown)
		}
		if !c.ETA.IsZero() {
			return errors.New("set Countdown or ETA, not both")
		}
	}
	if c.ExpiresIn != nil && !c.Expires.IsZero() {
		return errors.New("set Expires or ExpiresAt, not both")
	}
	if c.Priority != nil && (*c.Priority < 0 || *c.Priority > 255) {
		return fmt.Errorf("priority %d is outside 0..255", *c.Priority)
	}
	for _, l := range []*float64{c.HardLimit, c.SoftLimit} {
		if l != nil && (*l < 0 || math.IsNaN(*l) || math.IsInf(*l, 0)) {
			return fmt.Errorf("invalid time limit %v", *l)
		}
	}
	for k, v := range c.Stamps {
		if k == "" {
			return errors.New("stamp name is empty")
		}
		if _, own := reservedHeaders[k]; own {
			return fmt.Errorf("stamp %q is one of Celery's own headers", k)
		}
		if _, err := HeaderValue(v); err != nil {
			return fmt.Errorf("stamp %q: %w", k, err)
		}
	}
	return nil
}

// eta resolves Countdown and ETA against now.
func (c *Call) eta(now time.Time) time.Time {
	if c.Countdown != nil {
		return now.Add(*c.Countdown)
	}
	return c.ETA
}

// expires resolves Expires and ExpiresIn against now.
func (c *Call) expires(now time.Time) time.Time {
	if c.ExpiresIn != nil {
		return now.Add(*c.ExpiresIn)
	}
	return c.Expires
}

// Signature is a task call embedded in another task's message: a chain
// step, a callback or an errback. It encodes as Celery's signature dict.
type Signature struct {
	Task      string
	Args      []any
	Kwargs    map[string]any
	Options   map[string]any
	Immutable bool
	// SubtaskType is "chain", "group" or "" for a plain signature.
	SubtaskType string
}

// appendJSON writes s in Celery's key order, never null for args, kwargs
// and options.
func (s Signature) appendJSON(dst []byte) ([]byte, error) {
	var err error
	dst = append(dst, `{"task":`...)
	dst = appendJSONString(dst, s.Task)
	dst = append(dst, `,"args":`...)
	args := s.Args
	if args == nil {
		args = []any{}
	}
	if dst, err = AppendJSON(dst, args); err != nil {
		return nil, err
	}
	dst = append(dst, `,"kwargs":`...)
	kwargs := s.Kwargs
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	if dst, err = AppendJSON(dst, kwargs); err != nil {
		return nil, err
	}
	dst = append(dst, `,"options":`...)
	opts := s.Options
	if opts == nil {
		opts = map[string]any{}
	}
	if dst, err = AppendJSON(dst, opts); err != nil {
		return nil, err
	}
	dst = append(dst, `,"subtask_type":`...)
	if s.SubtaskType == "" {
		dst = append(dst, "null"...)
	} else {
		dst = appendJSONString(dst, s.SubtaskType)
	}
	dst = append(dst, `,"immutable":`...)
	if s.Immutable {
		dst = append(dst, "true"...)
	} else {
		dst = append(dst, "false"...)
	}
	return append(dst, '}'), nil
}

// MarshalJSON lets a Signature travel inside other values (a group's
// tasks kwarg).
func (s Signature) MarshalJSON() ([]byte, error) { return s.appendJSON(nil) }

// Embed is the third element of a protocol v2 body.
type Embed struct {
	Callbacks []Signature
	Errbacks  []Signature
	// Chain holds the remaining steps reversed: the worker pops the last.
	Chain []Signature
	Chord *Signature
}

// IsZero reports whether nothing is embedded.
func (e Embed) IsZero() bool {
	return e.Callbacks == nil && e.Errbacks == nil && e.Chain == nil && e.Chord == nil
}

func (e Embed) appendJSON(dst []byte) ([]byte, error) {
	var err error
	list := func(name string, sigs []Signature, first bool) {
		if err != nil {
			return
		}
		if !first {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, name...)
		dst = append(dst, `":`...)
		if sigs == nil {
			dst = append(dst, "null"...)
			return
		}
		dst = append(dst, '[')
		for i, s := range sigs {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = s.appendJSON(dst); err != nil {
				return
			}
		}
		dst = append(dst, ']')
	}
	dst = append(dst, '{')
	list("callbacks", e.Callbacks, true)
	list("errbacks", e.Errbacks, false)
	list("chain", e.Chain, false)
	if err != nil {
		return nil, err
	}
	dst = append(dst, `,"chord":`...)
	if e.Chord == nil {
		dst = append(dst, "null"...)
	} else if dst, err = e.Chord.appendJSON(dst); err != nil {
		return nil, err
	}
	return append(dst, '}'), nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
