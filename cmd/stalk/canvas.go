package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
)

// Canvases from the command line: chain and group of steps written as
// "TASK ARG...", and apply for a canvas written as JSON.

const stepSyntax = `Each STEP is one shell word holding a task and its arguments, as after 'stalk
call': "tasks.add 1 2". Arguments are JSON values or bare words, quoted inside
the step as a shell would ('tasks.echo "two words"'). A step may also hold
-k/--kwargs JSON, -q/--queue QUEUE, and --si (an immutable signature: it does
not receive the previous step's value).`

func (a *app) chainCommand() *cobra.Command {
	var (
		sf sendFlags
		tf topoFlags
		wf waitFlags
	)
	cmd := &cobra.Command{
		Use:   "chain STEP... [flags]",
		Short: "Send a chain of tasks, each receiving the previous one's value, and wait for the last",
		Long: `Send a chain: the steps run one after another, and each step after the first
receives the previous step's return value as an extra first argument, as
Celery's chain (task1 | task2) does. chain waits for each step in turn, shows
each final state on stderr, and prints the last step's value on stdout. A
failed step ends the chain: the steps after it never run, and chain exits 1.

` + stepSyntax + `

The flags apply to the whole chain: routing, priority and time limits to every
step that sets none of its own; --countdown, --eta and --expires to the first
step; --task-id to the last step, as in Celery. With --no-wait it prints the
first step's id (the one 'stalk graph' starts from) and the last step's id.
With --json: "sent" (with every step's id), a "result" line per step, the last
one closing.`,
		Example: `  stalk chain 'tasks.add 1 2' 'tasks.add 10' 'tasks.mul 3'      # (1+2+10)*3 = 39
  stalk chain 'tasks.add 1 2' 'tasks.echo --si "fresh start"'
  stalk chain 'tasks.add 1 2' 'tasks.add 10' -q math --no-wait
  stalk graph $(stalk chain 'tasks.add 1 2' 'tasks.add 10' --no-wait --keep | head -1) --wait`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("give the chain's steps, e.g. stalk chain 'tasks.add 1 2' 'tasks.add 10'")
			}
			return nil
		},
		ValidArgsFunction: noFileCompletion,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			steps, err := parseSteps(args)
			if err != nil {
				return err
			}
			send, err := sf.options(cmd.Flags())
			if err != nil {
				return err
			}
			return a.runCanvas(cmd.Context(), amqp.NewChain(steps...).Set(send...), &sf, &tf, &wf)
		}),
	}
	fs := cmd.Flags()
	a.addSendFlags(fs, &sf, true)
	a.addTopoFlags(fs, &tf)
	a.addWaitFlags(fs, &wf)
	registerTopoCompletion(cmd)
	return cmd
}

func (a *app) groupCommand() *cobra.Command {
	var (
		sf sendFlags
		tf topoFlags
		wf waitFlags
	)
	cmd := &cobra.Command{
		Use:   "group STEP... [flags]",
		Short: "Send tasks to run in parallel and wait for all of them",
		Long: `Send a group: the steps run in parallel, as Celery's group does. group shows each
member's final state on stderr as it arrives, and prints the values as one JSON
array on stdout, in the members' order. A failed member does not stop the
others; group exits 1 if any failed.

` + stepSyntax + `

The flags apply to every member that sets none of its own; --task-id sets the
group's id. With --no-wait it prints the group id, then each member's id. With
--json: "sent" (with every member's id), a "result" line per member as it
arrives, and the closing "result" line of the group, whose result is the array.`,
		Example: `  stalk group 'tasks.add 1 2' 'tasks.add 3 4' 'tasks.mul 5 6'   # [3,7,30]
  stalk group 'tasks.slow 1' 'tasks.slow 1' -t 10
  stalk -j group 'tasks.add 1 2' 'tasks.boom oops' | jq -c 'select(.state == "FAILURE")'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("give the group's members, e.g. stalk group 'tasks.add 1 2' 'tasks.add 3 4'")
			}
			return nil
		},
		ValidArgsFunction: noFileCompletion,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			steps, err := parseSteps(args)
			if err != nil {
				return err
			}
			send, err := sf.options(cmd.Flags())
			if err != nil {
				return err
			}
			return a.runCanvas(cmd.Context(), amqp.NewGroup(steps...).Set(send...), &sf, &tf, &wf)
		}),
	}
	fs := cmd.Flags()
	a.addSendFlags(fs, &sf, true)
	a.addTopoFlags(fs, &tf)
	a.addWaitFlags(fs, &wf)
	registerTopoCompletion(cmd)
	return cmd
}

func (a *app) applyCommand() *cobra.Command {
	var (
		sf sendFlags
		tf topoFlags
		wf waitFlags
	)
	cmd := &cobra.Command{
		Use:   "apply CANVAS [flags]",
		Short: "Send a canvas written as JSON (a task, chain or group, nested) and wait for it",
		Long: `Send a canvas described in JSON and wait for it as chain and group do. CANVAS
is the JSON text, @FILE to read it from a file, or - to read it from stdin.

A canvas is one of:

  {"task": "tasks.add", "args": [1, 2], "kwargs": {}, "immutable": false,
   "options": {"queue": "math", "priority": 3, "countdown": 5}}
  {"chain": [CANVAS, ...]}      steps in order; only the last may be a group
  {"group": [CANVAS, ...]}      members in parallel: tasks or chains of tasks

Celery's own form, json.dumps(chain(...)) or json.dumps(group(...)) in Python
("subtask_type": "chain" or "group" with the steps in kwargs.tasks), is read
too. Options a signature may carry: queue, exchange, routing_key, priority,
countdown, eta, expires, time_limit, soft_time_limit, task_id, shadow,
headers. The flags apply to the whole canvas, as for chain and group. A chord
(a group followed by another step) is refused: the rpc result backend cannot
run one.`,
		Example: `  stalk apply '{"chain": [{"task": "tasks.add", "args": [1, 2]}, {"group": [{"task": "tasks.add", "args": [10]}, {"task": "tasks.mul", "args": [10]}]}]}'
  stalk apply @workflow.json -q math
  python3 -c 'import json, tasks; from celery import chain; print(json.dumps(chain(tasks.add.s(1, 2), tasks.mul.s(3))))' | stalk apply -`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("give one CANVAS: JSON text, @FILE or - for stdin")
			}
			return nil
		},
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			raw, err := a.readCanvasArg(args[0])
			if err != nil {
				return err
			}
			cv, err := parseCanvasJSON(raw)
			if err != nil {
				return err
			}
			send, err := sf.options(cmd.Flags())
			if err != nil {
				return err
			}
			switch x := cv.(type) {
			case *amqp.ChainSig:
				cv = x.Set(send...)
			case *amqp.GroupSig:
				cv = x.Set(send...)
			case *amqp.TaskSig:
				cv = x.Set(send...)
			}
			return a.runCanvas(cmd.Context(), cv, &sf, &tf, &wf)
		}),
	}
	fs := cmd.Flags()
	a.addSendFlags(fs, &sf, true)
	a.addTopoFlags(fs, &tf)
	a.addWaitFlags(fs, &wf)
	registerTopoCompletion(cmd)
	return cmd
}

func (a *app) readCanvasArg(arg string) ([]byte, error) {
	switch {
	case arg == "-":
		b, err := io.ReadAll(io.LimitReader(a.stdin, 16<<20))
		if err != nil {
			return nil, fmt.Errorf("read the canvas from stdin: %w", err)
		}
		return b, nil
	case strings.HasPrefix(arg, "@"):
		b, err := os.ReadFile(arg[1:])
		if err != nil {
			return nil, usagef("read the canvas: %v", err)
		}
		return b, nil
	}
	return []byte(arg), nil
}

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

// ---- sending and waiting -----------------------------------------------------------

// runCanvas sends a canvas and waits for it.
func (a *app) runCanvas(ctx context.Context, cv amqp.Canvas, sf *sendFlags, tf *topoFlags, wf *waitFlags) error {
	opts, rm, err := wf.clientOptions()
	if err != nil {
		return err
	}
	topo, err := tf.options(sf.targetQueue())
	if err != nil {
		return err
	}
	opts = append(opts, topo...)
	if sf.defaultQueue != "" {
		opts = append(opts, amqp.WithDefaultQueue(sf.defaultQueue))
	}
	c, err := a.dialClient(ctx, opts...)
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.Apply(ctx, cv)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, result.ErrNotSupported) {
			return usagef("%s", strings.TrimPrefix(oneLine(err.Error()), "stalk: "))
		}
		return sendError(kindOf(cv), err)
	}
	stages := workflowStages(res)
	a.printSent(kindOf(cv), res, stages)
	if wf.noWait || sf.ignoreResult {
		if !a.g.json {
			for _, id := range noWaitIDs(stages) {
				fmt.Fprintln(a.stdout, id)
			}
		}
		return nil
	}
	wctx := ctx
	if wf.timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, wf.timeout)
		defer cancel()
	}
	var watch *queueWatch
	if first := stages[0]; first.task != nil && sf.exchange == "" && sf.routingKey == "" && first.task.Queue() != "" {
		watch = a.newQueueWatch(ctx, c, first.task.Queue(), first.task.ID())
	}
	err = a.awaitStages(ctx, wctx, stages, wf.timeout, rm == amqp.PerTask, watch)
	if !wf.keep && !errors.As(err, new(*timeoutError)) && ctx.Err() == nil {
		for _, s := range stages {
			if s.task != nil {
				_ = s.task.Forget(ctx)
			} else {
				_ = s.group.Forget(ctx)
			}
		}
	}
	return err
}

func kindOf(cv amqp.Canvas) string {
	switch x := cv.(type) {
	case *amqp.ChainSig:
		return "chain"
	case *amqp.GroupSig:
		return "group"
	case *amqp.TaskSig:
		return x.Name()
	}
	return "canvas"
}

// stage is one thing to wait for, in order: a task (a chain's step) or a
// group.
type stage struct {
	task  *result.AsyncResult
	group *result.GroupResult
}

// workflowStages lists what to wait for, first step first.
func workflowStages(res result.Result) []stage {
	var out []stage
	addChain := func(last *result.AsyncResult) {
		var rev []stage
		for r := last; r != nil; r = r.Parent() {
			rev = append(rev, stage{task: r})
		}
		for i := len(rev) - 1; i >= 0; i-- {
			out = append(out, rev[i])
		}
	}
	switch x := res.(type) {
	case *result.AsyncResult:
		addChain(x)
	case *result.GroupResult:
		if p := x.Parent(); p != nil {
			addChain(p)
		}
		out = append(out, stage{group: x})
	}
	return out
}

// noWaitIDs are the ids --no-wait prints: the first step's (where
// 'stalk graph' starts) and, for a longer chain, the last step's; for a
// group, its id and then its members'.
func noWaitIDs(stages []stage) []string {
	var ids []string
	for i, s := range stages {
		switch {
		case s.group != nil:
			ids = append(ids, s.group.ID())
			for _, m := range members(s.group) {
				ids = append(ids, m.ID())
			}
		case i == 0 || i == len(stages)-1:
			ids = append(ids, s.task.ID())
		}
	}
	return ids
}

func members(g *result.GroupResult) []*result.AsyncResult {
	var out []*result.AsyncResult
	for _, c := range g.Children() {
		if r, ok := c.(*result.AsyncResult); ok {
			out = append(out, r)
		}
	}
	return out
}

// printSent says what was sent: on stderr ("sent chain ..."), or as the
// "sent" JSON line; with --no-wait the ids go to stdout.
func (a *app) printSent(kind string, res result.Result, stages []stage) {
	var steps []jsonStep
	var names []string
	queue := ""
	for _, s := range stages {
		if s.task != nil {
			steps = append(steps, jsonStep{ID: s.task.ID(), Task: s.task.Name()})
			names = append(names, fmt.Sprintf("%s[%s]", s.task.Name(), s.task.ID()))
			if queue == "" {
				queue = s.task.Queue()
			}
			continue
		}
		var ms []string
		for _, m := range members(s.group) {
			steps = append(steps, jsonStep{ID: m.ID(), Task: m.Name()})
			ms = append(ms, fmt.Sprintf("%s[%s]", m.Name(), m.ID()))
			if queue == "" {
				queue = m.Queue()
			}
		}
		names = append(names, "group["+s.group.ID()+"]("+strings.Join(ms, ", ")+")")
	}
	if a.g.json {
		a.jsonLine(jsonSent{Event: "sent", ID: res.ID(), Task: kind, Queue: queue, Steps: steps, Time: a.now()})
		return
	}
	fmt.Fprintf(a.stderr, "sent %s %s to queue %s\n", kind, strings.Join(names, " | "), queue)
}

// awaitStages waits for each stage in turn. ctx is the command's; wctx
// carries --timeout.
func (a *app) awaitStages(ctx, wctx context.Context, stages []stage, timeout time.Duration, canResume bool, watch *queueWatch) error {
	start := a.now()
	last := len(stages) - 1
	for i, s := range stages {
		if s.group != nil {
			return a.awaitGroup(ctx, wctx, s.group, start, timeout, watch)
		}
		m, err := a.awaitStep(ctx, wctx, s.task, start, timeout, canResume, watch)
		if err != nil {
			return err
		}
		watch = nil
		te := m.Err()
		if a.g.json {
			a.jsonLine(resultLine(m, s.task.Name()))
		} else {
			a.stageLine(start, s.task.Name(), m)
		}
		if te != nil {
			a.printTraceback(m.Traceback)
			msg := describeFailure(te, s.task.Name())
			if i < last {
				msg += fmt.Sprintf("; the chain stopped: %s after it will not run", plural(last-i, "step", "steps"))
			}
			fmt.Fprintf(a.stderr, "stalk %s: %s\n", a.cmd, msg)
			return exitCode(exitFailed)
		}
		if i == last && !a.g.json {
			fmt.Fprintln(a.stdout, prettyJSON(m.RawResult, a.stdoutTTY))
		}
	}
	return nil
}

// awaitStep waits for one task, polling the queue watch.
func (a *app) awaitStep(ctx, wctx context.Context, r *result.AsyncResult, start time.Time, timeout time.Duration, canResume bool, watch *queueWatch) (*result.Meta, error) {
	m, err := r.GetMeta(wctx, result.OnMessage(func(result.Meta) { watch.seen() }), result.OnInterval(100*time.Millisecond, func() {
		if msg, ok := watch.poll(); ok {
			a.warn(r.ID(), watch.queue, msg)
		}
	}))
	if err == nil {
		return m, nil
	}
	if errors.Is(err, result.ErrTimeout) && ctx.Err() == nil {
		te := &timeoutError{id: r.ID(), state: string(r.State())}
		te.msg = fmt.Sprintf("timed out after %s waiting for %s[%s] (%s)", fmtDuration(timeout), r.Name(), r.ID(), lastState(r))
		if canResume {
			te.msg += fmt.Sprintf("; it may still run: 'stalk result %s --wait' keeps waiting", r.ID())
		}
		if r.State() == result.Pending {
			te.state = ""
		}
		return nil, te
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, fmt.Errorf("waiting for %s: %w", r.ID(), err)
}

func lastState(r *result.AsyncResult) string {
	if e := r.Entry(); e != nil && e.Latest() != nil {
		return "last state " + string(e.Latest().Status)
	}
	return "no state seen yet"
}

// awaitGroup waits for every member, in the order they finish, and prints
// the values in member order.
func (a *app) awaitGroup(ctx, wctx context.Context, g *result.GroupResult, start time.Time, timeout time.Duration, watch *queueWatch) error {
	ms := members(g)
	index := make(map[string]int, len(ms))
	for i, m := range ms {
		index[m.ID()] = i
	}
	values := make([]json.RawMessage, len(ms))
	failed := 0
	done := 0
	var firstFail *result.Meta
	_ = watch // members are published together: a silent queue shows in the timeout
	for r, err := range g.Iter(wctx) {
		if r == nil {
			if errors.Is(err, result.ErrTimeout) && ctx.Err() == nil {
				return &timeoutError{id: g.ID(), msg: fmt.Sprintf("timed out after %s waiting for group %s (%d of %d members ready)", fmtDuration(timeout), g.ID(), done, len(ms))}
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("waiting for group %s: %w", g.ID(), err)
		}
		done++
		m := r.Entry().Latest()
		if m == nil {
			return fmt.Errorf("waiting for group %s: member %s: %w", g.ID(), r.ID(), err)
		}
		if a.g.json {
			a.jsonLine(resultLine(m, r.Name()))
		} else {
			a.stageLine(start, r.Name(), m)
		}
		if te := m.Err(); te != nil {
			failed++
			if firstFail == nil {
				firstFail = m
			}
			values[index[r.ID()]] = json.RawMessage("null")
			fmt.Fprintf(a.stderr, "stalk %s: %s\n", a.cmd, describeFailure(te, r.Name()))
		} else {
			values[index[r.ID()]] = rawOrNull(m.RawResult)
		}
	}
	state := result.Success
	if failed > 0 {
		state = result.Failure
	}
	arr, _ := json.Marshal(values)
	if a.g.json {
		a.jsonLine(jsonResult{Event: "result", ID: g.ID(), Task: "group", State: string(state), Result: arr, Time: a.now()})
	} else {
		fmt.Fprintln(a.stdout, prettyJSON(arr, a.stdoutTTY))
	}
	if failed > 0 {
		if firstFail != nil {
			a.printTraceback(firstFail.Traceback)
		}
		fmt.Fprintf(a.stderr, "stalk %s: %s of group %s failed\n", a.cmd, plural(failed, "member", "members"), g.ID())
		return exitCode(exitFailed)
	}
	return nil
}

// stageLine prints a step's final state on stderr.
func (a *app) stageLine(start time.Time, name string, m *result.Meta) {
	line := fmt.Sprintf("[%7s] %s[%s] %s", fmtDuration(a.now().Sub(start)), name, m.TaskID, m.Status)
	if te := m.Err(); te != nil {
		line += " " + describeException(te)
	} else {
		line += " " + clipText(prettyJSON(m.RawResult, false), 60)
	}
	fmt.Fprintln(a.stderr, line)
}

func resultLine(m *result.Meta, name string) jsonResult {
	line := jsonResult{Event: "result", ID: m.TaskID, Task: name, State: string(m.Status), Time: m.Received}
	if te := m.Err(); te != nil {
		line.Exception = newJSONException(te)
		line.Traceback = m.Traceback
	} else {
		line.Result = rawOrNull(m.RawResult)
	}
	return line
}
