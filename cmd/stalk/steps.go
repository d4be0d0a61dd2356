package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/stalk-dev/stalk/amqp"
)

// ---- steps ----------------------------------------------------------------------

// parseSteps reads chain and group steps.
func parseSteps(raw []string) ([]amqp.Canvas, error) {
	out := make([]amqp.Canvas, 0, len(raw))
	for i, s := range raw {
		sig, err := parseStep(s)
		if err != nil {
			return nil, usagef("step %d (%s): %v", i+1, clip(s, 40), err)
		}
		out = append(out, sig)
	}
	return out, nil
}

// parseStep reads one "TASK ARG... [-k JSON] [-q QUEUE] [--si]".
func parseStep(s string) (*amqp.TaskSig, error) {
	words, err := splitWords(s)
	if err != nil {
		return nil, err
	}
	if len(words) == 0 {
		return nil, errors.New("empty step: give a task name and its arguments")
	}
	task := words[0]
	if strings.HasPrefix(task, "-") {
		return nil, errors.New("a step starts with the task's name")
	}
	var (
		args      []string
		kwargs    map[string]any
		opts      []amqp.SendOption
		immutable bool
	)
	for i := 1; i < len(words); i++ {
		w := words[i]
		name, val, hasVal := strings.Cut(w, "=")
		next := func() (string, error) {
			if hasVal {
				return val, nil
			}
			if i+1 >= len(words) {
				return "", fmt.Errorf("%s needs a value", name)
			}
			i++
			return words[i], nil
		}
		switch {
		case name == "-k" || name == "--kwargs":
			v, err := next()
			if err != nil {
				return nil, err
			}
			if kwargs, err = parseKwargs(v); err != nil {
				return nil, errors.New(strings.TrimPrefix(err.Error(), "--kwargs "))
			}
		case name == "-q" || name == "--queue":
			v, err := next()
			if err != nil {
				return nil, err
			}
			opts = append(opts, amqp.Queue(v))
		case w == "--si" || w == "--immutable":
			immutable = true
		case w == "--":
			args = append(args, words[i+1:]...)
			i = len(words)
		case strings.HasPrefix(w, "-") && !isNegativeNumber(w):
			return nil, fmt.Errorf("unknown step option %s (a step takes -k, -q and --si; use -- before arguments that start with a dash)", w)
		default:
			args = append(args, w)
		}
	}
	values, err := parseTaskArgs(args)
	if err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			return nil, errors.New(ue.msg)
		}
		return nil, err
	}
	opts = append([]amqp.SendOption{amqp.Args(values...)}, opts...)
	if kwargs != nil {
		opts = append(opts, amqp.Kwargs(kwargs))
	}
	if immutable {
		return amqp.Si(task, opts...), nil
	}
	return amqp.Sig(task, opts...), nil
}

// splitWords splits a step as a POSIX shell splits words: blanks
// separate, single quotes keep everything, double quotes keep all but
// \" and \\, and a backslash outside quotes escapes the next character.
func splitWords(s string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		inTok bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inTok {
				words = append(words, cur.String())
				cur.Reset()
				inTok = false
			}
		case c == '\'':
			inTok = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated ' quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			inTok = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New(`unterminated " quote`)
			}
		case c == '\\' && i+1 < len(s):
			inTok = true
			i++
			cur.WriteByte(s[i])
		default:
			inTok = true
			cur.WriteByte(c)
		}
	}
	if inTok {
		words = append(words, cur.String())
	}
	return words, nil
}

// ---- JSON canvases ---------------------------------------------------------------

// canvasJSON is one canvas node: ours ({"task"}, {"chain"}, {"group"}) or
// Celery's dict(signature).
type canvasJSON struct {
	Task        *string           `json:"task"`
	Args        []json.RawMessage `json:"args"`
	Kwargs      map[string]any    `json:"kwargs"`
	Options     map[string]any    `json:"options"`
	Immutable   bool              `json:"immutable"`
	SubtaskType *string           `json:"subtask_type"`
	ChordSize   any               `json:"chord_size"`
	Chain       []json.RawMessage `json:"chain"`
	Group       []json.RawMessage `json:"group"`
}

// parseCanvasJSON reads a canvas; unknown keys are errors, so that a typo
// does not silently drop an option.
func parseCanvasJSON(raw []byte) (amqp.Canvas, error) {
	cv, err := canvasFrom(raw, "canvas")
	if err != nil {
		return nil, usagef("%v", err)
	}
	return cv, nil
}

func canvasFrom(raw []byte, where string) (amqp.Canvas, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	var n canvasJSON
	if err := dec.Decode(&n); err != nil {
		return nil, fmt.Errorf("%s: %v", where, err)
	}
	kinds := 0
	for _, set := range []bool{n.Task != nil, n.Chain != nil, n.Group != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return nil, fmt.Errorf(`%s: give exactly one of "task", "chain" or "group"`, where)
	}
	// Celery's form: the steps are in kwargs.tasks.
	if n.SubtaskType != nil && (*n.SubtaskType == "chain" || *n.SubtaskType == "group") {
		tasks, _ := n.Kwargs["tasks"].([]any)
		var members []json.RawMessage
		for _, t := range tasks {
			b, err := json.Marshal(t)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", where, err)
			}
			members = append(members, b)
		}
		if *n.SubtaskType == "chain" {
			n.Chain, n.Task = members, nil
		} else {
			n.Group, n.Task = members, nil
		}
		if n.Chain == nil && n.Group == nil {
			return nil, fmt.Errorf("%s: a %s with no tasks", where, *n.SubtaskType)
		}
	}
	switch {
	case n.Chain != nil:
		steps, err := children(n.Chain, where+".chain")
		if err != nil {
			return nil, err
		}
		if len(steps) == 0 {
			return nil, fmt.Errorf("%s: an empty chain", where)
		}
		for i, s := range steps[:len(steps)-1] {
			if _, ok := s.(*amqp.GroupSig); ok {
				return nil, fmt.Errorf("%s.chain[%d]: a group followed by another step is a chord, which the rpc result backend cannot run", where, i)
			}
		}
		opts, err := signatureOptions(n.Options, where)
		if err != nil {
			return nil, err
		}
		return amqp.NewChain(steps...).Set(opts...), nil
	case n.Group != nil:
		members, err := children(n.Group, where+".group")
		if err != nil {
			return nil, err
		}
		if len(members) == 0 {
			return nil, fmt.Errorf("%s: an empty group", where)
		}
		opts, err := signatureOptions(n.Options, where)
		if err != nil {
			return nil, err
		}
		return amqp.NewGroup(members...).Set(opts...), nil
	}
	if *n.Task == "" {
		return nil, fmt.Errorf(`%s: "task" is empty`, where)
	}
	args := make([]any, 0, len(n.Args))
	for _, r := range n.Args {
		v, err := parseJSON(string(r))
		if err != nil {
			return nil, fmt.Errorf("%s.args: %v", where, err)
		}
		args = append(args, nativeNumbers(v))
	}
	opts, err := signatureOptions(n.Options, where)
	if err != nil {
		return nil, err
	}
	opts = append([]amqp.SendOption{amqp.Args(args...)}, opts...)
	if len(n.Kwargs) > 0 {
		kw, _ := nativeNumbers(n.Kwargs).(map[string]any)
		opts = append(opts, amqp.Kwargs(kw))
	}
	if n.Immutable {
		return amqp.Si(*n.Task, opts...), nil
	}
	return amqp.Sig(*n.Task, opts...), nil
}

func children(raws []json.RawMessage, where string) ([]amqp.Canvas, error) {
	out := make([]amqp.Canvas, 0, len(raws))
	for i, r := range raws {
		c, err := canvasFrom(r, fmt.Sprintf("%s[%d]", where, i))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// signatureOptions reads a signature's "options".
func signatureOptions(o map[string]any, where string) ([]amqp.SendOption, error) {
	var out []amqp.SendOption
	str := func(k string, v any) (string, error) {
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%s.options.%s: want a string", where, k)
		}
		return s, nil
	}
	secs := func(k string, v any) (time.Duration, error) {
		switch x := v.(type) {
		case json.Number, string:
			return parseDurationFlag(where+".options."+k, fmt.Sprint(x))
		}
		return 0, fmt.Errorf("%s.options.%s: want seconds", where, k)
	}
	for _, k := range sortedKeys(o) {
		v := o[k]
		var err error
		var s string
		var d time.Duration
		switch k {
		case "queue":
			if s, err = str(k, v); err == nil {
				out = append(out, amqp.Queue(s))
			}
		case "exchange":
			if s, err = str(k, v); err == nil {
				out = append(out, amqp.Exchange(s))
			}
		case "routing_key":
			if s, err = str(k, v); err == nil {
				out = append(out, amqp.RoutingKey(s))
			}
		case "task_id":
			if s, err = str(k, v); err == nil {
				out = append(out, amqp.TaskID(s))
			}
		case "shadow":
			if s, err = str(k, v); err == nil {
				out = append(out, amqp.Shadow(s))
			}
		case "eta":
			if s, err = str(k, v); err == nil {
				var t time.Time
				if t, err = parseTime(k, s); err == nil {
					out = append(out, amqp.ETA(t))
				}
			}
		case "priority":
			n, ok := v.(json.Number)
			p, perr := n.Int64()
			if !ok || perr != nil || p < 0 || p > 255 {
				err = fmt.Errorf("%s.options.priority: want 0 to 255", where)
			} else {
				out = append(out, amqp.Priority(int(p)))
			}
		case "countdown":
			if d, err = secs(k, v); err == nil {
				out = append(out, amqp.Countdown(d))
			}
		case "expires":
			if d, err = secs(k, v); err == nil {
				out = append(out, amqp.Expires(d))
			}
		case "time_limit":
			if d, err = secs(k, v); err == nil {
				out = append(out, amqp.TimeLimit(d))
			}
		case "soft_time_limit":
			if d, err = secs(k, v); err == nil {
				out = append(out, amqp.SoftTimeLimit(d))
			}
		case "headers":
			h, ok := nativeNumbers(v).(map[string]any)
			if !ok {
				err = fmt.Errorf("%s.options.headers: want an object", where)
			} else {
				out = append(out, amqp.Headers(h))
			}
		default:
			err = fmt.Errorf("%s.options: unknown option %q (known: queue, exchange, routing_key, priority, countdown, eta, expires, time_limit, soft_time_limit, task_id, shadow, headers)", where, k)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func parseDurationFlag(where, s string) (time.Duration, error) {
	d, err := parseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %v", where, err)
	}
	return d, nil
}
