package main

import (
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

// canvasCommand is chain or group: STEPs, the send, topology and wait
// flags, and build making the canvas from the steps.
func (a *app) canvasCommand(use, short, long, example, noSteps string, build func([]amqp.Canvas, []amqp.SendOption) amqp.Canvas) *cobra.Command {
	var (
		sf sendFlags
		tf topoFlags
		wf waitFlags
	)
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Long:    long,
		Example: example,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s", noSteps)
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
			return a.runCanvas(cmd.Context(), build(steps, send), &sf, &tf, &wf)
		}),
	}
	fs := cmd.Flags()
	a.addSendFlags(fs, &sf, true)
	a.addTopoFlags(fs, &tf)
	a.addWaitFlags(fs, &wf)
	registerTopoCompletion(cmd)
	return cmd
}

func (a *app) chainCommand() *cobra.Command {
	return a.canvasCommand("chain STEP... [flags]",
		"Send a chain of tasks, each receiving the previous one's value, and wait for the last",
		`Send a chain: the steps run one after another, and each step after the first
receives the previous step's return value as an extra first argument, as
Celery's chain (task1 | task2) does. chain waits for each step in turn, shows
each final state on stderr, and prints the last step's value on stdout. A
failed step ends the chain: the steps after it never run, and chain exits 1.

`+stepSyntax+`

The flags apply to the whole chain: routing, priority and time limits to every
step that sets none of its own; --countdown, --eta and --expires to the first
step; --task-id to the last step, as in Celery. With --no-wait it prints the
first step's id (the one 'stalk graph' starts from) and the last step's id.
With --json: "sent" (with every step's id), a "result" line per step, the last
one closing.`,
		`  stalk chain 'tasks.add 1 2' 'tasks.add 10' 'tasks.mul 3'      # (1+2+10)*3 = 39
  stalk chain 'tasks.add 1 2' 'tasks.echo --si "fresh start"'
  stalk chain 'tasks.add 1 2' 'tasks.add 10' -q math --no-wait
  stalk graph $(stalk chain 'tasks.add 1 2' 'tasks.add 10' --no-wait --keep | head -1) --wait`,
		"give the chain's steps, e.g. stalk chain 'tasks.add 1 2' 'tasks.add 10'",
		func(steps []amqp.Canvas, send []amqp.SendOption) amqp.Canvas {
			return amqp.NewChain(steps...).Set(send...)
		})
}

func (a *app) groupCommand() *cobra.Command {
	return a.canvasCommand("group STEP... [flags]",
		"Send tasks to run in parallel and wait for all of them",
		`Send a group: the steps run in parallel, as Celery's group does. group shows each
member's final state on stderr as it arrives, and prints the values as one JSON
array on stdout, in the members' order. A failed member does not stop the
others; group exits 1 if any failed.

`+stepSyntax+`

The flags apply to every member that sets none of its own; --task-id sets the
group's id. With --no-wait it prints the group id, then each member's id. With
--json: "sent" (with every member's id), a "result" line per member as it
arrives, and the closing "result" line of the group, whose result is the array.`,
		`  stalk group 'tasks.add 1 2' 'tasks.add 3 4' 'tasks.mul 5 6'   # [3,7,30]
  stalk group 'tasks.slow 1' 'tasks.slow 1' -t 10
  stalk -j group 'tasks.add 1 2' 'tasks.boom oops' | jq -c 'select(.state == "FAILURE")'`,
		"give the group's members, e.g. stalk group 'tasks.add 1 2' 'tasks.add 3 4'",
		func(steps []amqp.Canvas, send []amqp.SendOption) amqp.Canvas {
			return amqp.NewGroup(steps...).Set(send...)
		})
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

// ---- sending and waiting -----------------------------------------------------------

// runCanvas sends a canvas and waits for it.
func (a *app) runCanvas(ctx context.Context, cv amqp.Canvas, sf *sendFlags, tf *topoFlags, wf *waitFlags) error {
	c, rm, err := a.sendClient(ctx, sf, tf, wf)
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
