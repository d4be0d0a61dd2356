package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
)

// ---- waiting ------------------------------------------------------------------

// waitFlags say how a command waits for results and what it leaves on
// the broker.
type waitFlags struct {
	timeout time.Duration
	noWait  bool
	keep    bool
	mode    string
	modeEnv bool
	reply   replyFlags
}

func (a *app) addWaitFlags(fs *pflag.FlagSet, wf *waitFlags) {
	mode := strings.TrimSpace(a.getenv("STALK_REPLY_MODE"))
	wf.modeEnv = mode != ""
	if mode == "" {
		mode = "per-task"
	}
	secondsFlag(fs, &wf.timeout, "timeout", "t", 0, "stop waiting after this many `seconds` and exit 3 (default: wait until the task is ready)")
	fs.BoolVar(&wf.noWait, "no-wait", false, "print the task id and exit once the broker has the task")
	fs.BoolVar(&wf.keep, "keep", false, "keep the result on the broker after printing it, for 'stalk result ID' (default: delete its reply queue)")
	fs.StringVar(&wf.mode, "mode", mode, "reply `mode`: per-task (a reply queue per task, readable by 'stalk result ID') or shared (one queue for this run); $STALK_REPLY_MODE")
	a.addReplyFlags(fs, &wf.reply)
	group(fs, "Waiting options", "timeout", "no-wait", "keep", "mode", "result-expires", "reply-prefix")
}

// clientOptions checks the waiting flags and returns the reply mode's
// client options.
func (wf *waitFlags) clientOptions() ([]amqp.Option, amqp.ReplyMode, error) {
	rm, err := amqp.ParseReplyMode(wf.mode)
	if err != nil {
		return nil, 0, usagef("%s %q: want per-task or shared", from("mode", wf.modeEnv, "STALK_REPLY_MODE"), wf.mode)
	}
	if rm == amqp.Shared && wf.noWait {
		return nil, 0, usagef("--mode shared with --no-wait: nobody could read the result (a shared reply queue belongs to this run); use per-task mode, or wait")
	}
	if rm == amqp.Shared && wf.keep {
		return nil, 0, usagef("--keep needs per-task mode: a shared reply queue belongs to this run")
	}
	opts, err := wf.reply.options()
	if err != nil {
		return nil, 0, err
	}
	opts = append(opts, amqp.WithReplyMode(rm))
	if rm == amqp.Shared {
		// The shared queue serves this one run: let the broker delete it
		// soon after we leave.
		opts = append(opts, amqp.WithResultExpires(time.Minute))
	}
	return opts, rm, nil
}

// sendClient dials the client that call, chain, group and apply send
// with: the reply mode and lifetime of the wait flags, and the topology of
// the send's target queue.
func (a *app) sendClient(ctx context.Context, sf *sendFlags, tf *topoFlags, wf *waitFlags) (*amqp.Client, amqp.ReplyMode, error) {
	opts, rm, err := wf.clientOptions()
	if err != nil {
		return nil, rm, err
	}
	topo, err := tf.options(sf.targetQueue())
	if err != nil {
		return nil, rm, err
	}
	opts = append(opts, topo...)
	if sf.defaultQueue != "" {
		opts = append(opts, amqp.WithDefaultQueue(sf.defaultQueue))
	}
	c, err := a.dialClient(ctx, opts...)
	return c, rm, err
}

func (a *app) runCall(ctx context.Context, task string, send []amqp.SendOption, sf *sendFlags, tf *topoFlags, wf *waitFlags) error {
	c, rm, err := a.sendClient(ctx, sf, tf, wf)
	if err != nil {
		return err
	}
	defer c.Close()

	r, err := c.Send(ctx, task, send...)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return sendError(task, err)
	}
	sentQueue := r.Queue()
	if sentQueue == "" {
		sentQueue = sf.targetQueue()
	}
	if a.g.json {
		a.jsonLine(jsonSent{Event: "sent", ID: r.ID(), Task: task, Queue: sentQueue, Time: a.now()})
	}
	if wf.noWait || sf.ignoreResult {
		if !a.g.json {
			fmt.Fprintln(a.stdout, r.ID())
		}
		return nil
	}
	if !a.g.json {
		fmt.Fprintf(a.stderr, "sent %s[%s] to queue %s\n", task, r.ID(), sentQueue)
	}
	var watch *queueWatch
	if sf.exchange == "" && sf.routingKey == "" {
		watch = a.newQueueWatch(ctx, c, sentQueue, r.ID())
	}
	m, err := a.await(ctx, r, task, wf.timeout, rm == amqp.PerTask, watch, !wf.keep)
	if err != nil {
		return explainReplyErr(err)
	}
	return a.report(m, task)
}

// sendError explains a failed send.
func sendError(task string, err error) error {
	msg := strings.TrimPrefix(oneLine(err.Error()), "stalk: ")
	if errors.Is(err, amqp.ErrInvalidOption) {
		if !strings.HasPrefix(msg, "send ") {
			msg = "send " + task + ": " + msg
		}
		return usagef("%s", msg)
	}
	if strings.HasPrefix(msg, "send ") {
		return err // the library names the task already
	}
	return fmt.Errorf("send %s: %w", task, err)
}

// noWorkerAfter is how long a task may go without any state before call
// asks the broker whether anything consumes its queue.
const noWorkerAfter = 3 * time.Second

// queueWatch says once that nothing consumes a task's queue, when no
// state has arrived noWorkerAfter after sending. It is polled from the
// goroutine that waits (OnInterval), which also prints.
type queueWatch struct {
	a       *app
	queue   string
	id      string
	start   time.Time
	check   func() (amqp.QueueInfo, error)
	asked   bool
	answer  chan amqp.QueueInfo
	settled bool
}

func (a *app) newQueueWatch(ctx context.Context, c *amqp.Client, queue, id string) *queueWatch {
	return &queueWatch{a: a, queue: queue, id: id, start: time.Now(), answer: make(chan amqp.QueueInfo, 1),
		check: func() (amqp.QueueInfo, error) { return c.QueueInfo(ctx, queue) }}
}

// seen stops the watch: a state arrived, so a worker has the task.
func (w *queueWatch) seen() {
	if w != nil {
		w.settled = true
	}
}

// poll returns the warning to print, once.
func (w *queueWatch) poll() (string, bool) {
	if w == nil || w.settled {
		return "", false
	}
	if !w.asked {
		if time.Since(w.start) < noWorkerAfter {
			return "", false
		}
		w.asked = true
		go func() {
			qi, err := w.check()
			if err != nil {
				qi = amqp.QueueInfo{Exists: true, Consumers: -1} // unknown: say nothing
			}
			w.answer <- qi
		}()
		return "", false
	}
	select {
	case qi := <-w.answer:
		w.settled = true
		if qi.Consumers != 0 {
			return "", false
		}
		if !qi.Exists {
			return fmt.Sprintf("queue %s does not exist: no worker consumes it; still waiting (a worker may start and declare it)", w.queue), true
		}
		return fmt.Sprintf("no worker consumes queue %s (%s waiting); still waiting: a worker may start (Ctrl-C or --timeout to stop)", w.queue, plural(qi.Messages, "task", "tasks")), true
	default:
		return "", false
	}
}

// warn prints a warning line: text on stderr, or a JSON "warning" line.
func (a *app) warn(id, queue, msg string) {
	if a.g.json {
		a.jsonLine(jsonWarning{Event: "warning", ID: id, Queue: queue, Message: msg, Time: a.now()})
		return
	}
	fmt.Fprintf(a.stderr, "stalk %s: %s\n", a.cmd, msg)
}

// await waits for r's final state, showing the states as they come, and
// returns the final message. A timeout is a *timeoutError. With forget,
// the result is deleted from the broker once it is read.
func (a *app) await(ctx context.Context, r *result.AsyncResult, name string, timeout time.Duration, canResume bool, watch *queueWatch, forget bool) (*result.Meta, error) {
	var view *progressView
	if !a.g.json {
		view = newProgressView(a.stderr, a.stderrTTY, a.width, a.now, name)
	}
	seenAny := false
	get := []result.GetOption{result.OnMessage(func(m result.Meta) {
		seenAny = true
		watch.seen()
		if m.Status.Ready() {
			return
		}
		if a.g.json {
			a.jsonLine(jsonState{Event: "state", ID: r.ID(), State: string(m.Status), Meta: rawOrNull(m.RawResult), Time: m.Received})
			return
		}
		view.Update(m)
	}), result.OnInterval(100*time.Millisecond, func() {
		if msg, ok := watch.poll(); ok {
			if view != nil {
				view.Clear()
			}
			a.warn(r.ID(), watch.queue, msg)
		}
		if view != nil {
			view.Tick()
		}
	})}
	if timeout > 0 {
		get = append(get, result.Timeout(timeout))
	}
	if forget {
		get = append(get, result.ForgetAfterGet())
	}
	m, err := r.GetMeta(ctx, get...)
	if err != nil {
		if view != nil {
			view.Clear()
		}
		if errors.Is(err, result.ErrTimeout) && ctx.Err() == nil {
			who := r.ID()
			if name != "" {
				who = name + "[" + r.ID() + "]"
			}
			te := &timeoutError{id: r.ID()}
			last := "no state seen yet"
			if seenAny {
				te.state = string(r.State())
				last = "last state " + te.state
			}
			te.msg = fmt.Sprintf("timed out after %s waiting for %s (%s)", fmtDuration(timeout), who, last)
			if canResume {
				te.msg += fmt.Sprintf("; it may still run: 'stalk result %s --wait' keeps waiting, 'stalk revoke %s' cancels it", r.ID(), r.ID())
			}
			return nil, te
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
		a.jsonLine(line)
	} else if te == nil {
		fmt.Fprintln(a.stdout, prettyJSON(m.RawResult, a.stdoutTTY))
	}
	if te == nil {
		return nil
	}
	a.printTraceback(m.Traceback)
	fmt.Fprintf(a.stderr, "stalk %s: %s\n", a.cmd, describeFailure(te, name))
	return exitCode(exitFailed)
}

// printTraceback prints a remote traceback on stderr (not with --json,
// whose result line carries it).
func (a *app) printTraceback(tb string) {
	if a.g.json || tb == "" {
		return
	}
	fmt.Fprint(a.stderr, tb)
	if tb[len(tb)-1] != '\n' {
		fmt.Fprintln(a.stderr)
	}
}

func describeFailure(te *result.TaskError, name string) string {
	who := te.TaskID
	if name != "" {
		who = name + "[" + te.TaskID + "]"
	}
	exc := describeException(te)
	if te.State == result.Revoked {
		return fmt.Sprintf("task %s was revoked (%s)", who, exc)
	}
	return fmt.Sprintf("task %s failed: %s", who, exc)
}

func describeException(te *result.TaskError) string {
	exc := te.QualifiedType()
	if exc == "" {
		exc = "Exception"
	}
	if msg := te.Message(); msg != "" {
		exc += ": " + msg
	}
	return exc
}

// dialClient connects the amqp client within --connect-timeout.
func (a *app) dialClient(ctx context.Context, opts ...amqp.Option) (*amqp.Client, error) {
	cctx, cancel := context.WithTimeout(ctx, a.g.connectTimeout)
	defer cancel()
	base := []amqp.Option{amqp.WithLogger(a.log), amqp.WithConnectionName("stalk-cli-" + strings.ReplaceAll(a.cmd, " ", "-"))}
	c, err := amqp.Dial(cctx, a.url(), append(base, opts...)...)
	if err != nil {
		if errors.Is(err, amqp.ErrInvalidOption) {
			return nil, usagef("%s", strings.TrimPrefix(oneLine(err.Error()), "stalk: "))
		}
		return nil, a.connectError(ctx, err)
	}
	a.connected()
	return c, nil
}

// JSON lines written with --json.

type jsonSent struct {
	Event string     `json:"event"`
	ID    string     `json:"id"`
	Task  string     `json:"task"`
	Queue string     `json:"queue"`
	Steps []jsonStep `json:"steps,omitempty"`
	Time  time.Time  `json:"time"`
}

type jsonStep struct {
	ID   string `json:"id"`
	Task string `json:"task"`
}

type jsonState struct {
	Event string          `json:"event"`
	ID    string          `json:"id"`
	State string          `json:"state"`
	Meta  json.RawMessage `json:"meta"`
	Time  time.Time       `json:"time"`
}

type jsonWarning struct {
	Event   string    `json:"event"`
	ID      string    `json:"id,omitempty"`
	Queue   string    `json:"queue,omitempty"`
	Message string    `json:"message"`
	Time    time.Time `json:"time"`
}

type jsonResult struct {
	Event     string          `json:"event"`
	ID        string          `json:"id"`
	Task      string          `json:"task,omitempty"`
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
