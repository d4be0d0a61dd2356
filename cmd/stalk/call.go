package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stalk-dev/stalk/amqp"
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
