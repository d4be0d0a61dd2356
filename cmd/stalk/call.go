package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
)

var callSpec = cmdSpec{
	name:     "call",
	synopsis: "call TASK [ARGS...] [flags]",
	about: `Send TASK with positional ARGS and wait for its result.

Each ARG is a JSON value: 2, 2.5, true, null, "text", [1, 2], {"a": 1}. A bare
word that is not valid JSON is taken as a string, so 'stalk call tasks.echo
hello' passes "hello"; an argument that starts like JSON ({, [ or ") but does
not parse is an error. Use -- before arguments that start with a dash.

While it waits, call shows the task's states on stderr: on a terminal, one
live line with a spinner, or a progress bar when a custom state's meta has
"current" and "total" (update_state(state="PROGRESS", meta={"current": i,
"total": n})); otherwise one plain line per state. The result is printed as
JSON on stdout. With --json, stdout gets one JSON object per line: "sent",
then one "state" line per state message, then the "result" line.

Exit status: 0 success, 1 the task failed or was revoked (exception and
traceback on stderr), 2 usage error, 3 --timeout passed, 4 broker unreachable.`,
	examples: `
stalk call tasks.add 2 3
stalk call tasks.echo hello '{"nested": [1, 2]}' --kwargs '{"sep": "-"}'
stalk call tasks.progress 10 0.2
stalk call reports.render 7 --queue reports --timeout 30s
stalk call tasks.add 2 3 --countdown 10 --expires 60
stalk call tasks.slow 30 --no-wait          # prints the task id
stalk --json call tasks.progress 5 | jq -c .`,
}

func runCall(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet(callSpec)
	kwargs := fs.String("kwargs", "", "keyword arguments as a JSON `object`")
	queue := fs.String("queue", "", "send the task to this `queue` (default \"celery\")")
	countdown := fs.String("countdown", "", "run no earlier than this many `seconds` from now (10, 1.5 or 30s)")
	eta := fs.String("eta", "", "run no earlier than this `time` (RFC 3339, e.g. 2025-06-01T12:00:00Z)")
	expires := fs.String("expires", "", "revoke the task if it has not started by `T`: seconds (60), a duration (10m) or a time")
	timeout := fs.Duration("timeout", 0, "stop waiting after this `duration` and exit 3 (default: wait until the task is ready)")
	noWait := fs.Bool("no-wait", false, "print the task id and exit once the broker has the task")
	rf := addReplyFlags(fs)
	mode := fs.String("mode", "per-task", "reply `mode`: per-task (the result stays readable by 'stalk result ID') or shared (one queue for this call)")
	pos, err := a.parse(fs, callSpec, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("missing TASK: give the task's registered name, e.g. 'stalk call tasks.add 2 3'")
	}
	task := pos[0]
	taskArgs, err := parseTaskArgs(pos[1:])
	if err != nil {
		return err
	}
	kw, err := parseKwargs(*kwargs)
	if err != nil {
		return err
	}
	rm, err := amqp.ParseReplyMode(*mode)
	if err != nil {
		return usagef("--mode %q: want per-task or shared", *mode)
	}
	if *timeout < 0 {
		return usagef("--timeout must not be negative")
	}
	send := []amqp.SendOption{amqp.Args(taskArgs...), amqp.Kwargs(kw)}
	if *queue != "" {
		send = append(send, amqp.Queue(*queue))
	}
	if *countdown != "" && *eta != "" {
		return usagef("give --countdown or --eta, not both")
	}
	if *countdown != "" {
		d, err := parseSeconds("countdown", *countdown)
		if err != nil {
			return err
		}
		send = append(send, amqp.Countdown(d))
	}
	if *eta != "" {
		t, err := parseTime("eta", *eta)
		if err != nil {
			return err
		}
		send = append(send, amqp.ETA(t))
	}
	if *expires != "" {
		rel, abs, err := parseWhen("expires", *expires)
		if err != nil {
			return err
		}
		if abs.IsZero() {
			send = append(send, amqp.Expires(rel))
		} else {
			send = append(send, amqp.ExpiresAt(abs))
		}
	}

	opts, err := rf.options()
	if err != nil {
		return err
	}
	opts = append(opts, amqp.WithReplyMode(rm))
	if rm == amqp.Shared {
		// The shared queue serves this one call: let the broker delete it
		// soon after we leave.
		opts = append(opts, amqp.WithResultExpires(time.Minute))
	}
	c, err := a.dialClient(ctx, opts...)
	if err != nil {
		return err
	}
	defer c.Close()

	r, err := c.Send(ctx, task, send...)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("send %s: %w", task, err)
	}
	sentQueue := *queue
	if sentQueue == "" {
		sentQueue = r.Queue()
	}
	if a.g.json {
		if err := writeJSONLine(a.stdout, jsonSent{Event: "sent", ID: r.ID(), Task: task, Queue: sentQueue, Time: a.now()}); err != nil {
			return err
		}
	}
	if *noWait {
		if !a.g.json {
			fmt.Fprintln(a.stdout, r.ID())
		}
		return nil
	}
	if !a.g.json {
		fmt.Fprintf(a.stderr, "sent %s[%s] to queue %s\n", task, r.ID(), sentQueue)
	}
	m, err := a.await(ctx, r, task, *timeout, rm == amqp.PerTask)
	if err != nil {
		return explainReplyErr(err)
	}
	return a.report(m, task)
}

// await waits for r's final state, showing the states as they come, and
// returns the final message. A timeout is reported here (exit 3).
func (a *app) await(ctx context.Context, r *result.AsyncResult, name string, timeout time.Duration, canResume bool) (*result.Meta, error) {
	var view *progressView
	if !a.g.json {
		view = newProgressView(a.stderr, a.stderrTTY, a.width, a.now, name)
	}
	get := []result.GetOption{result.OnMessage(func(m result.Meta) {
		if m.Status.Ready() {
			return
		}
		if a.g.json {
			_ = writeJSONLine(a.stdout, jsonState{Event: "state", ID: r.ID(), State: string(m.Status), Meta: rawOrNull(m.RawResult), Time: m.Received})
			return
		}
		view.Update(m)
	})}
	if timeout > 0 {
		get = append(get, result.Timeout(timeout))
	}
	if view != nil && view.tty {
		get = append(get, result.OnInterval(100*time.Millisecond, view.Tick))
	}
	m, err := r.GetMeta(ctx, get...)
	if err != nil {
		if view != nil {
			view.Clear()
		}
		if errors.Is(err, result.ErrTimeout) && ctx.Err() == nil {
			msg := fmt.Sprintf("stalk %s: timed out after %s waiting for %s[%s] (last state %s)", a.cmd, timeout, name, r.ID(), r.State())
			if canResume {
				msg += fmt.Sprintf("; it may still run: 'stalk result %s --wait' keeps waiting, 'stalk revoke %s' cancels it", r.ID(), r.ID())
			}
			fmt.Fprintln(a.stderr, msg)
			return nil, exitCode(exitTimeout)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("waiting for %s: %w", r.ID(), err)
	}
	if view != nil {
		view.Finish(m)
	}
	return m, nil
}

// report prints a final state: the result on stdout, or the exception and
// traceback on stderr (exit 1).
func (a *app) report(m *result.Meta, name string) error {
	te := m.Err()
	if a.g.json {
		line := jsonResult{Event: "result", ID: m.TaskID, State: string(m.Status), Time: m.Received}
		if te != nil {
			line.Exception = newJSONException(te)
			line.Traceback = m.Traceback
		} else {
			line.Result = rawOrNull(m.RawResult)
		}
		if err := writeJSONLine(a.stdout, line); err != nil {
			return err
		}
	} else if te == nil {
		fmt.Fprintln(a.stdout, prettyJSON(m.RawResult, a.stdoutTTY))
	}
	if te == nil {
		return nil
	}
	if !a.g.json && m.Traceback != "" {
		fmt.Fprint(a.stderr, m.Traceback)
		if m.Traceback[len(m.Traceback)-1] != '\n' {
			fmt.Fprintln(a.stderr)
		}
	}
	fmt.Fprintf(a.stderr, "stalk %s: %s\n", a.cmd, describeFailure(te, name))
	return exitCode(exitFailed)
}

func describeFailure(te *result.TaskError, name string) string {
	who := te.TaskID
	if name != "" {
		who = name + "[" + te.TaskID + "]"
	}
	exc := te.QualifiedType()
	if exc == "" {
		exc = "Exception"
	}
	if msg := te.Message(); msg != "" {
		exc += ": " + msg
	}
	if te.State == result.Revoked {
		return fmt.Sprintf("task %s was revoked (%s)", who, exc)
	}
	return fmt.Sprintf("task %s failed: %s", who, exc)
}

// dialClient connects the amqp client within --connect-timeout.
func (a *app) dialClient(ctx context.Context, opts ...amqp.Option) (*amqp.Client, error) {
	cctx, cancel := context.WithTimeout(ctx, a.g.connectTimeout)
	defer cancel()
	base := []amqp.Option{amqp.WithLogger(a.log), amqp.WithConnectionName("stalk-cli-" + a.cmd)}
	c, err := amqp.Dial(cctx, a.url(), append(base, opts...)...)
	if err != nil {
		return nil, a.connectError(ctx, err)
	}
	a.connected()
	return c, nil
}

// JSON lines written with --json.

type jsonSent struct {
	Event string    `json:"event"`
	ID    string    `json:"id"`
	Task  string    `json:"task"`
	Queue string    `json:"queue"`
	Time  time.Time `json:"time"`
}

type jsonState struct {
	Event string          `json:"event"`
	ID    string          `json:"id"`
	State string          `json:"state"`
	Meta  json.RawMessage `json:"meta"`
	Time  time.Time       `json:"time"`
}

type jsonResult struct {
	Event     string          `json:"event"`
	ID        string          `json:"id"`
	State     string          `json:"state"`
	Result    json.RawMessage `json:"result,omitempty"`
	Exception *jsonException  `json:"exception,omitempty"`
	Traceback string          `json:"traceback,omitempty"`
	Time      time.Time       `json:"time"`
}

type jsonException struct {
	Type    string `json:"type"`
	Module  string `json:"module,omitempty"`
	Message string `json:"message"`
	Args    []any  `json:"args"`
}

func newJSONException(te *result.TaskError) *jsonException {
	args := te.Args
	if args == nil {
		args = []any{}
	}
	return &jsonException{Type: te.Type, Module: te.Module, Message: te.Message(), Args: args}
}
