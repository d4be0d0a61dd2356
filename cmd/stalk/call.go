package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
)

func (a *app) callCommand() *cobra.Command {
	var (
		sf       sendFlags
		tf       topoFlags
		wf       waitFlags
		argsJSON string
		kwargs   string
	)
	cmd := &cobra.Command{
		Use:   "call TASK [ARG...] [flags]",
		Short: "Send a task and wait for its result (celery call)",
		Long: `Send TASK with its arguments and wait for its result.

Each ARG is a JSON value: 2, 2.5, true, null, "text", [1, 2], {"a": 1}. A bare
word that is not valid JSON is taken as a string, so 'stalk call tasks.echo
hello' passes "hello"; an argument that starts like JSON ({, [ or ") but does
not parse is an error. -a/--args takes the whole list as one JSON array
instead, as 'celery call -a' does. Use -- before arguments that start with a
dash and are not numbers.

While it waits, call shows the task's states on stderr: on a terminal, one
live line with a spinner, or a progress bar when a custom state's meta has
"current" and "total" (update_state(state="PROGRESS", meta={"current": i,
"total": n})); otherwise one plain line per state. If no worker consumes the
task's queue a few seconds after sending, call says so once and keeps
waiting. The result is printed as JSON on stdout. With --json, stdout gets one
JSON object per line: "sent", then one "state" line per state message, then
the closing line: "result", or "error" (a timeout, for one).

The task's reply queue is deleted once its result is printed, unless --keep;
after a --timeout or with --no-wait it stays (--result-expires, a day by
default) so that 'stalk result ID' can read it later.

Exit status: 0 success, 1 the task failed or was revoked (exception and
traceback on stderr), 2 usage error, 3 --timeout passed, 4 broker
unreachable, 130 interrupted.`,
		Example: `  stalk call tasks.add 2 3
  stalk call tasks.add -a '[2, 3]'
  stalk call tasks.echo hello '{"nested": [1, 2]}' -k '{"sep": "-"}'
  stalk call tasks.progress 10 0.2
  stalk call reports.render 7 -q reports -t 30
  stalk call tasks.add 2 3 --countdown 10 --expires 60 --priority 5
  stalk call tasks.add 2 3 -q jobs --queue-type quorum --delayed-delivery required --countdown 5
  stalk call tasks.slow 30 --no-wait          # prints the task id
  stalk -j call tasks.progress 5 | jq -c .`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("missing TASK: give the task's registered name, e.g. 'stalk call tasks.add 2 3'")
			}
			return nil
		},
		ValidArgsFunction: noFileCompletion,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			task := args[0]
			var taskArgs []any
			var err error
			switch {
			case cmd.Flags().Changed("args") && len(args) > 1:
				return usagef("give the task's arguments either as ARGs or as --args, not both")
			case cmd.Flags().Changed("args"):
				taskArgs, err = parseArgsArray(argsJSON)
			default:
				taskArgs, err = parseTaskArgs(args[1:])
			}
			if err != nil {
				return err
			}
			kw, err := parseKwargs(kwargs)
			if err != nil {
				return err
			}
			send, err := sf.options(cmd.Flags())
			if err != nil {
				return err
			}
			send = append([]amqp.SendOption{amqp.Args(taskArgs...), amqp.Kwargs(kw)}, send...)
			return a.runCall(cmd.Context(), task, send, &sf, &tf, &wf)
		}),
	}
	fs := cmd.Flags()
	fs.StringVarP(&argsJSON, "args", "a", "", "positional arguments as one JSON `array`, instead of ARGs")
	fs.StringVarP(&kwargs, "kwargs", "k", "", "keyword arguments as a JSON `object`")
	group(fs, "Calling options", "args", "kwargs")
	a.addSendFlags(fs, &sf, true)
	a.addTopoFlags(fs, &tf)
	a.addWaitFlags(fs, &wf)
	registerTopoCompletion(cmd)
	return cmd
}

func noFileCompletion(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// ---- send options -------------------------------------------------------------

// sendFlags are the options of one task, or the workflow options of a
// chain or group.
type sendFlags struct {
	queue, exchange, routingKey string
	countdown, eta, expires     string
	taskID, shadow              string
	priority                    int
	timeLimit, softTimeLimit    time.Duration
	ignoreResult                bool
	stamps, headers             []string
	defaultQueue                string
}

func (a *app) addSendFlags(fs *pflag.FlagSet, sf *sendFlags, withTaskID bool) {
	sf.defaultQueue = strings.TrimSpace(a.getenv("STALK_DEFAULT_QUEUE"))
	fs.StringVar(&sf.countdown, "countdown", "", "run no earlier than this many `seconds` from now (10, 1.5 or 30s)")
	fs.StringVar(&sf.eta, "eta", "", "run no earlier than this `time` (RFC 3339, e.g. 2025-06-01T12:00:00Z)")
	fs.StringVar(&sf.expires, "expires", "", "revoke the task if it has not started by `T`: seconds (60), a duration (10m) or a time")
	fs.IntVar(&sf.priority, "priority", 0, "message `priority`, 0 to 255 (the queue needs x-max-priority)")
	secondsFlag(fs, &sf.timeLimit, "time-limit", "", 0, "hard time limit in `seconds`: the worker kills the task after it")
	secondsFlag(fs, &sf.softTimeLimit, "soft-time-limit", "", 0, "soft time limit in `seconds`: SoftTimeLimitExceeded is raised in the task")
	fs.BoolVar(&sf.ignoreResult, "ignore-result", false, "ask the worker to store no result; stalk prints the task id and exits")
	fs.StringArrayVar(&sf.stamps, "stamp", nil, "stamp the task with `name=value` (repeatable), for 'stalk control revoke_by_stamped_headers'")
	fs.StringArrayVar(&sf.headers, "header", nil, "extra message header `name=value` (repeatable; JSON values are decoded), a task.request attribute on the worker")
	fs.StringVar(&sf.shadow, "shadow", "", "`name` the worker logs instead of the task's")
	calling := []string{"countdown", "eta", "expires", "priority", "time-limit", "soft-time-limit", "ignore-result", "stamp", "header", "shadow"}
	if withTaskID {
		fs.StringVar(&sf.taskID, "task-id", "", "use this task `id` instead of a new UUID")
		calling = append(calling, "task-id")
	}
	group(fs, "Calling options", calling...)

	def := "the default queue, \"celery\""
	if sf.defaultQueue != "" {
		def = fmt.Sprintf("%q, from $STALK_DEFAULT_QUEUE", sf.defaultQueue)
	}
	fs.StringVarP(&sf.queue, "queue", "q", "", "send to this `queue` (default "+def+")")
	fs.StringVar(&sf.exchange, "exchange", "", "publish to this `exchange` instead of the queue's (it must exist)")
	fs.StringVar(&sf.routingKey, "routing-key", "", "publish with this routing `key` instead of the queue's")
	group(fs, "Routing options", "queue", "exchange", "routing-key")
}

// options turns the flags into send options, checking them all.
func (sf *sendFlags) options(fs *pflag.FlagSet) ([]amqp.SendOption, error) {
	var send []amqp.SendOption
	if sf.queue != "" {
		send = append(send, amqp.Queue(sf.queue))
	}
	if sf.exchange != "" {
		send = append(send, amqp.Exchange(sf.exchange))
	}
	if fs.Changed("routing-key") {
		send = append(send, amqp.RoutingKey(sf.routingKey))
	}
	if sf.countdown != "" && sf.eta != "" {
		return nil, usagef("give --countdown or --eta, not both")
	}
	if sf.countdown != "" {
		d, err := parseSeconds("countdown", sf.countdown)
		if err != nil {
			return nil, err
		}
		send = append(send, amqp.Countdown(d))
	}
	if sf.eta != "" {
		t, err := parseTime("eta", sf.eta)
		if err != nil {
			return nil, err
		}
		send = append(send, amqp.ETA(t))
	}
	if sf.expires != "" {
		rel, abs, err := parseWhen("expires", sf.expires)
		if err != nil {
			return nil, err
		}
		if abs.IsZero() {
			send = append(send, amqp.Expires(rel))
		} else {
			send = append(send, amqp.ExpiresAt(abs))
		}
	}
	if fs.Changed("priority") {
		if sf.priority < 0 || sf.priority > 255 {
			return nil, usagef("--priority %d: want 0 to 255", sf.priority)
		}
		send = append(send, amqp.Priority(sf.priority))
	}
	if sf.timeLimit > 0 {
		send = append(send, amqp.TimeLimit(sf.timeLimit))
	}
	if sf.softTimeLimit > 0 {
		send = append(send, amqp.SoftTimeLimit(sf.softTimeLimit))
	}
	if sf.timeLimit > 0 && sf.softTimeLimit > sf.timeLimit {
		return nil, usagef("--soft-time-limit %s is over --time-limit %s: the soft limit must come first", sf.softTimeLimit, sf.timeLimit)
	}
	if sf.ignoreResult {
		send = append(send, amqp.IgnoreResult())
	}
	if sf.taskID != "" {
		send = append(send, amqp.TaskID(sf.taskID))
	}
	if sf.shadow != "" {
		send = append(send, amqp.Shadow(sf.shadow))
	}
	if len(sf.stamps) > 0 {
		stamps, order, err := parsePairs("stamp", sf.stamps, false)
		if err != nil {
			return nil, err
		}
		// A stamp given twice gets both values, as a list.
		multi := map[string][]string{}
		for _, s := range sf.stamps {
			k, v, _ := strings.Cut(s, "=")
			multi[strings.TrimSpace(k)] = append(multi[strings.TrimSpace(k)], v)
		}
		for _, k := range order {
			if vs := multi[k]; len(vs) > 1 {
				send = append(send, amqp.Stamp(k, vs))
			} else {
				send = append(send, amqp.Stamp(k, stamps[k]))
			}
		}
	}
	if len(sf.headers) > 0 {
		h, _, err := parsePairs("header", sf.headers, true)
		if err != nil {
			return nil, err
		}
		send = append(send, amqp.Headers(h))
	}
	return send, nil
}

// targetQueue is the queue the task goes to: --queue, $STALK_DEFAULT_QUEUE
// or "celery".
func (sf *sendFlags) targetQueue() string {
	switch {
	case sf.queue != "":
		return sf.queue
	case sf.defaultQueue != "":
		return sf.defaultQueue
	}
	return "celery"
}

// ---- topology -----------------------------------------------------------------

// topoFlags describe the task queue the way the workers declare it, for
// when stalk has to declare it, and how delayed tasks travel.
type topoFlags struct {
	queueType, exchangeType  string
	queueExchange, queueKey  string
	delayed                  string
	noDeclare                bool
	typeEnv, exchEnv, delEnv bool
	declareEnvVal            string
}

// envBool reads a boolean environment variable: 1, true, yes, on or 0,
// false, no, off.
func envBool(v string) (val, ok bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true, true
	case "0", "false", "no", "off":
		return false, true
	}
	return false, false
}

func (a *app) addTopoFlags(fs *pflag.FlagSet, tf *topoFlags) {
	envDefault := func(name string, set *bool) string {
		v := strings.TrimSpace(a.getenv(name))
		*set = v != ""
		return v
	}
	qt := envDefault("STALK_DEFAULT_QUEUE_TYPE", &tf.typeEnv)
	et := envDefault("STALK_DEFAULT_EXCHANGE_TYPE", &tf.exchEnv)
	dd := envDefault("STALK_DELAYED_DELIVERY", &tf.delEnv)
	if dd == "" {
		dd = "auto"
	}
	tf.declareEnvVal = strings.TrimSpace(a.getenv("STALK_DECLARE_QUEUES"))
	noDeclare := false
	if v, ok := envBool(tf.declareEnvVal); ok {
		noDeclare = !v
	}
	fs.StringVar(&tf.queueType, "queue-type", qt, "`type` of the queue if stalk declares it: classic or quorum; $STALK_DEFAULT_QUEUE_TYPE (default classic)")
	fs.StringVar(&tf.exchangeType, "exchange-type", et, "`type` of the queue's exchange if stalk declares it: direct, topic, fanout or headers; $STALK_DEFAULT_EXCHANGE_TYPE (default direct)")
	fs.StringVar(&tf.queueExchange, "queue-exchange", "", "`exchange` the queue is bound to, as the workers declare it (default: the queue's name)")
	fs.StringVar(&tf.queueKey, "queue-routing-key", "", "binding `key` of the queue, as the workers declare it (default: the queue's name)")
	fs.BoolVar(&tf.noDeclare, "no-declare", noDeclare, "never declare the queue: the workers own the topology, and a missing queue is an error; $STALK_DECLARE_QUEUES=false")
	fs.StringVar(&tf.delayed, "delayed-delivery", dd, "delivery `mode` of countdowns and ETAs: auto (Celery 5.5+ native delayed delivery when the queue is quorum), off (held by the worker) or required; $STALK_DELAYED_DELIVERY")
	group(fs, "Queue topology options", "queue-type", "exchange-type", "queue-exchange", "queue-routing-key", "no-declare", "delayed-delivery")
}

func registerTopoCompletion(cmd *cobra.Command) {
	_ = cmd.RegisterFlagCompletionFunc("queue-type", fixedCompletion("classic", "quorum"))
	_ = cmd.RegisterFlagCompletionFunc("exchange-type", fixedCompletion("direct", "topic", "fanout", "headers"))
	_ = cmd.RegisterFlagCompletionFunc("delayed-delivery", fixedCompletion("auto", "off", "required"))
	_ = cmd.RegisterFlagCompletionFunc("mode", fixedCompletion("per-task", "shared"))
}

// from names where a value came from, for error messages.
func from(flag string, env bool, envName string) string {
	if env {
		return fmt.Sprintf("--%s (from $%s)", flag, envName)
	}
	return "--" + flag
}

// options turns the topology flags into client options. queue is the
// task's queue: it is described to the client as the workers declare it.
func (tf *topoFlags) options(queue string) ([]amqp.Option, error) {
	var opts []amqp.Option
	if tf.declareEnvVal != "" {
		if _, ok := envBool(tf.declareEnvVal); !ok {
			return nil, usagef("$STALK_DECLARE_QUEUES %q: want true or false", tf.declareEnvVal)
		}
	}
	qt := amqp.QueueType(strings.ToLower(tf.queueType))
	switch qt {
	case "", amqp.Classic, amqp.Quorum:
	default:
		return nil, usagef("%s %q: want classic or quorum", from("queue-type", tf.typeEnv, "STALK_DEFAULT_QUEUE_TYPE"), tf.queueType)
	}
	et := strings.ToLower(tf.exchangeType)
	switch et {
	case "", "direct", "topic", "fanout", "headers":
	default:
		return nil, usagef("%s %q: want direct, topic, fanout or headers", from("exchange-type", tf.exchEnv, "STALK_DEFAULT_EXCHANGE_TYPE"), tf.exchangeType)
	}
	switch strings.ToLower(tf.delayed) {
	case "auto":
		opts = append(opts, amqp.WithDelayedDelivery(amqp.DelayedAuto))
	case "off":
		opts = append(opts, amqp.WithDelayedDelivery(amqp.DelayedOff))
	case "required":
		opts = append(opts, amqp.WithDelayedDelivery(amqp.DelayedRequired))
	default:
		return nil, usagef("%s %q: want auto, off or required", from("delayed-delivery", tf.delEnv, "STALK_DELAYED_DELIVERY"), tf.delayed)
	}
	if qt != "" {
		opts = append(opts, amqp.WithDefaultQueueType(qt), amqp.WithMissingQueueType(qt))
	}
	if et != "" {
		opts = append(opts, amqp.WithMissingExchangeType(et))
	}
	if qt != "" || et != "" || tf.queueExchange != "" || tf.queueKey != "" {
		opts = append(opts, amqp.WithTaskQueues(amqp.TaskQueue{
			Name: queue, Type: qt, ExchangeType: et, Exchange: tf.queueExchange, RoutingKey: tf.queueKey,
		}))
	}
	if tf.noDeclare {
		opts = append(opts, amqp.WithDeclareQueues(false))
	}
	return opts, nil
}

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

func (a *app) runCall(ctx context.Context, task string, send []amqp.SendOption, sf *sendFlags, tf *topoFlags, wf *waitFlags) error {
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
