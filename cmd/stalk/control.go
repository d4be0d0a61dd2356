package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stalk-dev/stalk/revoke"
)

// Remote control over Celery's celery.pidbox broadcast: revoke, ping,
// status, inspect and control.

// remoteFlags are -t/--timeout and -d/--destination, as Celery's remote
// control commands take them.
type remoteFlags struct {
	timeout time.Duration
	dest    []string
}

func addRemoteFlags(fs *pflag.FlagSet, rf *remoteFlags) {
	secondsFlag(fs, &rf.timeout, "timeout", "t", time.Second, "collect replies until none has come for this many `seconds`")
	fs.StringSliceVarP(&rf.dest, "destination", "d", nil, "only these `workers` (comma-separated or repeated), e.g. celery@web1")
	group(fs, "Remote control options", "timeout", "destination")
}

func (rf *remoteFlags) options() ([]revoke.Option, error) {
	if rf.timeout <= 0 {
		return nil, usagef("--timeout must be positive")
	}
	opts := []revoke.Option{revoke.Wait(rf.timeout)}
	if len(rf.dest) > 0 {
		opts = append(opts, revoke.Destination(rf.dest...))
	}
	return opts, nil
}

// ---- revoke -----------------------------------------------------------------------

func (a *app) revokeCommand() *cobra.Command {
	var (
		terminate bool
		sig       string
		dest      []string
		wait      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "revoke ID... [flags]",
		Short: "Revoke tasks, terminating them if running (celery control revoke)",
		Long: `Ask the workers to revoke the tasks with the given ids, and print their replies.

A worker discards a revoked task when it meets it and publishes a REVOKED
result. With --terminate it also kills the task if it is running, with
--signal (SIGTERM by default). Revokes live in the workers' memory: a worker
that restarts forgets them unless it runs with --statedb.

Replies are collected until none has come for --wait (default 1 s); --wait 0
only broadcasts the revoke and prints nothing. Exit status: 0 when every reply
is OK, 1 when a worker replied with an error or none replied, 2 usage error
(a bad signal among them, caught before connecting), 4 broker unreachable.`,
		Example: `  stalk revoke 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f
  stalk revoke 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --terminate -w 2
  stalk revoke ID1 ID2 --terminate --signal SIGKILL -d celery@web1`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("give at least one task ID, e.g. 'stalk revoke 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f'")
			}
			return nil
		},
		ValidArgsFunction: noFileCompletion,
		RunE: runE(func(cmd *cobra.Command, ids []string) error {
			if sig != "" && !terminate {
				return usagef("--signal needs --terminate: a signal is only sent to running tasks that are terminated")
			}
			opts := []revoke.Option{}
			if terminate {
				opts = append(opts, revoke.Terminate())
			}
			if sig != "" {
				opts = append(opts, revoke.Signal(sig))
			}
			if len(dest) > 0 {
				opts = append(opts, revoke.Destination(dest...))
			}
			if wait > 0 {
				opts = append(opts, revoke.Wait(wait))
			}
			// Every argument is checked before connecting: the message is
			// built once, without a broker.
			if _, err := revoke.RevokeMessage(ids, opts...); err != nil {
				return invalidArg(err)
			}
			ctx := cmd.Context()
			ctl, err := a.dialControl(ctx)
			if err != nil {
				return err
			}
			defer ctl.Close()
			replies, err := ctl.Revoke(ctx, ids, opts...)
			if err != nil && errors.Is(err, revoke.ErrInvalidArgument) {
				return invalidArg(err)
			}
			if wait == 0 && err == nil {
				if !a.g.json {
					fmt.Fprintf(a.stderr, "revoke of %s sent; not waiting for replies\n", plural(len(ids), "task", "tasks"))
				} else {
					a.jsonLine(map[string]any{"event": "sent", "method": "revoke", "ids": ids})
				}
				return nil
			}
			return a.printReplies("revoke", replies, err, wait)
		}),
	}
	fs := cmd.Flags()
	fs.BoolVar(&terminate, "terminate", false, "kill the task if it is running")
	fs.StringVar(&sig, "signal", "", "`signal` --terminate sends, by name or number: SIGTERM (default), SIGKILL, 9")
	fs.StringSliceVarP(&dest, "destination", "d", nil, "only these `workers` (comma-separated or repeated), e.g. celery@web1")
	secondsFlag(fs, &wait, "wait", "w", time.Second, "collect replies until none has come for this many `seconds`; 0 collects none")
	_ = cmd.RegisterFlagCompletionFunc("signal", fixedCompletion("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2"))
	return cmd
}

// invalidArg turns a library's ErrInvalidArgument into a usage error,
// without the library's prefixes.
func invalidArg(err error) error {
	msg := oneLine(err.Error())
	msg = strings.ReplaceAll(msg, "stalk: ", "")
	msg = strings.ReplaceAll(msg, "invalid argument: ", "")
	if i := strings.Index(msg, ": "); i > 0 && !strings.Contains(msg[:i], " ") {
		msg = msg[i+2:] // the method name: our prefix says it
	}
	return usagef("%s", msg)
}

// ---- ping and status -----------------------------------------------------------

func (a *app) pingCommand() *cobra.Command {
	var rf remoteFlags
	cmd := &cobra.Command{
		Use:   "ping [flags]",
		Short: "Ask the workers to answer (celery inspect ping)",
		Long: `Ask the workers to answer, and print one line per worker that did.

Replies are collected until none has come for --timeout. Exit status: 0 when a
worker answered (every --destination, when given), 1 when none did, 4 broker
unreachable.`,
		Example: `  stalk ping
  stalk ping -d celery@web1,celery@web2 -t 3
  stalk -j ping`,
		Args: noArgs("ping", "use -d/--destination to name workers"),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			opts, err := rf.options()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ctl, err := a.dialControl(ctx)
			if err != nil {
				return err
			}
			defer ctl.Close()
			replies, err := ctl.Ping(ctx, opts...)
			return a.printReplies("ping", replies, err, rf.timeout)
		}),
	}
	addRemoteFlags(cmd.Flags(), &rf)
	return cmd
}

func (a *app) statusCommand() *cobra.Command {
	var rf remoteFlags
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "Show the workers that are online (celery status)",
		Long: `Ping the workers and list those that answered, then how many: "N nodes
online.", as 'celery status' does.

Exit status: 0 when a worker answered, 1 when none did (or a --destination
stayed silent), 4 broker unreachable.`,
		Example: `  stalk status
  stalk status -t 3
  stalk -j status | jq -r .worker`,
		Args: noArgs("status", "use -d/--destination to name workers"),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			opts, err := rf.options()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ctl, err := a.dialControl(ctx)
			if err != nil {
				return err
			}
			defer ctl.Close()
			replies, err := ctl.Ping(ctx, opts...)
			a.printNodes("ping", replies, false)
			return a.controlError(err, len(replies), rf.timeout)
		}),
	}
	addRemoteFlags(cmd.Flags(), &rf)
	return cmd
}

func noArgs(name, hint string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usagef("%s takes no arguments; %s", name, hint)
		}
		return nil
	}
}

// ---- inspect ------------------------------------------------------------------

// remoteMethod is one inspect or control command.
type remoteMethod struct {
	name  string
	args  string // the arguments' synopsis
	short string
	check cobra.PositionalArgs
	// run sends the command. For inspect methods it is nil: they all go
	// through Controller.Inspect with request().
	run     func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error)
	request func(args []string) (map[string]any, error)
	// render turns one worker's reply value into lines of text.
	render func(a *app, raw json.RawMessage) []string
	// noReply: workers do not answer it; it is sent without waiting.
	noReply bool
}

func inspectMethods() []remoteMethod {
	none := cobra.NoArgs
	return []remoteMethod{
		{name: "active", short: "tasks the workers are running now", check: none, render: renderTasks,
			request: func([]string) (map[string]any, error) { return map[string]any{"safe": nil}, nil }},
		{name: "scheduled", short: "tasks waiting for their ETA or countdown", check: none, render: renderScheduled},
		{name: "reserved", short: "tasks received and waiting for a pool slot", check: none, render: renderTasks},
		{name: "revoked", short: "ids in the workers' revoked sets", check: none, render: renderList},
		{name: "registered", args: "[ATTR...]", short: "the tasks the workers know, with the given attributes (e.g. rate_limit)", check: cobra.ArbitraryArgs, render: renderList,
			request: func(args []string) (map[string]any, error) {
				if len(args) == 0 {
					return nil, nil
				}
				return map[string]any{"taskinfoitems": args}, nil
			}},
		{name: "stats", short: "worker statistics: pool, broker, totals per task, rusage", check: none, render: renderJSON},
		{name: "active_queues", short: "the queues the workers consume", check: none, render: renderQueues},
		{name: "query_task", args: "ID...", short: "what the workers know of these task ids", check: minArgs(1, "give at least one task ID"), render: renderQuery,
			request: func(args []string) (map[string]any, error) { return map[string]any{"ids": args}, nil }},
		{name: "conf", args: "[include_defaults]", short: "the workers' configuration (with defaults when given true)", check: cobra.MaximumNArgs(1), render: renderJSON,
			request: func(args []string) (map[string]any, error) {
				if len(args) == 0 {
					return nil, nil
				}
				b, err := strconv.ParseBool(args[0])
				if err != nil {
					return nil, usagef("conf: include_defaults %q: want true or false", args[0])
				}
				return map[string]any{"with_defaults": b}, nil
			}},
		{name: "report", short: "the workers' bug-report information (versions, platform, settings)", check: none, render: renderText},
		{name: "ping", short: "ask the workers to answer", check: none, render: renderText},
		{name: "clock", short: "the workers' logical clocks", check: none, render: renderJSON},
	}
}

func minArgs(n int, msg string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef("%s", msg)
		}
		return nil
	}
}

func methodNames(ms []remoteMethod) []string {
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.name
	}
	return names
}

func (a *app) inspectCommand() *cobra.Command {
	var rf remoteFlags
	methods := inspectMethods()
	parent := &cobra.Command{
		Use:   "inspect METHOD [ARG...] [flags]",
		Short: "Ask the workers what they run, hold and know (celery inspect)",
		Long: `Send the inspect METHOD to the workers and print each worker's answer, then
how many answered: "N nodes online.".

Replies are collected until none has come for --timeout (default 1 s). With
--json, each worker's answer is one JSON line: {"worker", "method", "reply"}
("ok" and "error" too when the worker answered with them).

Exit status: 0 when a worker answered, 1 when none did or one replied with an
error, 2 usage error (an unknown method among them), 4 broker unreachable.

Methods: ` + strings.Join(methodNames(methods), ", ") + `.`,
		Example: `  stalk inspect active
  stalk inspect registered rate_limit
  stalk inspect query_task 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f
  stalk inspect stats -d celery@web1 -t 3
  stalk -j inspect active_queues | jq -r '.reply[].name'`,
		Args: cobra.ArbitraryArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			return unknownMethod("inspect", args, methods)
		}),
	}
	addRemoteFlags(parent.PersistentFlags(), &rf)
	for _, m := range methods {
		m := m
		sub := &cobra.Command{
			Use:               strings.TrimSpace(m.name + " " + m.args),
			Aliases:           aliases(m.name),
			Short:             m.short,
			Args:              usageArgs(m.check, "inspect "+m.name, m.args),
			ValidArgsFunction: noFileCompletion,
			RunE: runE(func(cmd *cobra.Command, args []string) error {
				var req map[string]any
				if m.request != nil {
					var err error
					if req, err = m.request(args); err != nil {
						return err
					}
				}
				opts, err := rf.options()
				if err != nil {
					return err
				}
				ctx := cmd.Context()
				ctl, err := a.dialControl(ctx)
				if err != nil {
					return err
				}
				defer ctl.Close()
				replies, err := ctl.Inspect(ctx, m.name, req, opts...)
				a.printRemote(m, replies)
				return a.controlError(err, len(replies), rf.timeout)
			}),
		}
		parent.AddCommand(sub)
	}
	return parent
}

// aliases gives a_b the alias a-b.
func aliases(name string) []string {
	if strings.Contains(name, "_") {
		return []string{strings.ReplaceAll(name, "_", "-")}
	}
	return nil
}

// usageArgs makes an argument check's error a usage error with the
// synopsis.
func usageArgs(check cobra.PositionalArgs, name, synopsis string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			var ue *usageError
			if errors.As(err, &ue) {
				return err
			}
			if synopsis == "" {
				return usagef("%s takes no arguments", name)
			}
			return usagef("%s takes %s", name, synopsis)
		}
		return nil
	}
}

func unknownMethod(kind string, args []string, methods []remoteMethod) error {
	names := methodNames(methods)
	if len(args) == 0 {
		return usagef("give what to %s: one of %s; e.g. 'stalk %s %s'", kind, strings.Join(names, ", "), kind, names[0])
	}
	return usagef("unknown %s method %q: give one of %s; e.g. 'stalk %s %s'", kind, restoreArg(args[0]), strings.Join(names, ", "), kind, names[0])
}

// ---- control --------------------------------------------------------------------

// rateRE is the rate Celery's workers accept: tasks per second, minute or
// hour ("10", "10/s", "5/m", "100/h"); the library checks it again.
var rateRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(/[smh][a-z]*)?$`)

func controlMethods() []remoteMethod {
	none := cobra.NoArgs
	return []remoteMethod{
		{name: "rate_limit", args: "TASK RATE", short: "limit how often the workers start TASK: 10/s, 5/m, 100/h, or 0 for no limit", check: cobra.ExactArgs(2), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				rate := args[1]
				if rate == "0" {
					rate = ""
				}
				return ctl.RateLimit(ctx, args[0], rate, opts...)
			}},
		{name: "time_limit", args: "TASK SOFT [HARD]", short: "set TASK's soft and hard time limits, in seconds (0: none)", check: cobra.RangeArgs(2, 3), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				soft, hard, err := timeLimits(args[1:])
				if err != nil {
					return nil, err
				}
				return ctl.TimeLimit(ctx, args[0], soft, hard, opts...)
			}},
		{name: "shutdown", short: "shut the workers down warmly (they finish their tasks); workers do not reply", check: none, noReply: true,
			run: func(ctx context.Context, ctl *revoke.Controller, _ []string, opts []revoke.Option) ([]revoke.Reply, error) {
				return ctl.Shutdown(ctx, opts...)
			}},
		{name: "pool_grow", args: "[N]", short: "add N processes to the workers' pools (default 1)", check: cobra.MaximumNArgs(1), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				n, err := countArg(args)
				if err != nil {
					return nil, err
				}
				return ctl.PoolGrow(ctx, n, opts...)
			}},
		{name: "pool_shrink", args: "[N]", short: "remove N processes from the workers' pools (default 1)", check: cobra.MaximumNArgs(1), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				n, err := countArg(args)
				if err != nil {
					return nil, err
				}
				return ctl.PoolShrink(ctx, n, opts...)
			}},
		{name: "autoscale", args: "MAX MIN", short: "set the bounds of autoscaling workers (started with --autoscale)", check: cobra.ExactArgs(2), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				maxP, err1 := strconv.Atoi(args[0])
				minP, err2 := strconv.Atoi(args[1])
				if err1 != nil || err2 != nil {
					return nil, usagef("autoscale MAX MIN: give two whole numbers, got %q %q", args[0], args[1])
				}
				return ctl.Autoscale(ctx, maxP, minP, opts...)
			}},
		{name: "add_consumer", args: "QUEUE [EXCHANGE [TYPE [ROUTING_KEY]]]", short: "make the workers consume QUEUE (declared by them if need be)", check: cobra.RangeArgs(1, 4), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				q := revoke.ConsumerQueue{Name: args[0]}
				if len(args) > 1 {
					q.Exchange = args[1]
				}
				if len(args) > 2 {
					q.ExchangeType = args[2]
				}
				if len(args) > 3 {
					q.RoutingKey = args[3]
				}
				if qt := queueTypeFromContext(ctx); qt != "" && qt != "classic" {
					q.Arguments = map[string]any{"x-queue-type": qt}
				}
				return ctl.AddConsumer(ctx, q, opts...)
			}},
		{name: "cancel_consumer", args: "QUEUE", short: "make the workers stop consuming QUEUE", check: cobra.ExactArgs(1), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				return ctl.CancelConsumer(ctx, args[0], opts...)
			}},
		{name: "enable_events", short: "make the workers send task events (as celery worker -E)", check: none, render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, _ []string, opts []revoke.Option) ([]revoke.Reply, error) {
				return ctl.EnableEvents(ctx, opts...)
			}},
		{name: "disable_events", short: "make the workers stop sending task events", check: none, render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, _ []string, opts []revoke.Option) ([]revoke.Reply, error) {
				return ctl.DisableEvents(ctx, opts...)
			}},
		{name: "heartbeat", short: "make the workers send a worker-heartbeat event now; workers do not reply", check: none, noReply: true,
			run: func(ctx context.Context, ctl *revoke.Controller, _ []string, opts []revoke.Option) ([]revoke.Reply, error) {
				return ctl.Heartbeat(ctx, opts...)
			}},
		{name: "revoke_by_stamped_headers", args: "NAME=VALUE...", short: "revoke every task stamped with one of these values (Celery 5.3+ workers)", check: minArgs(1, "give at least one NAME=VALUE stamp"), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				headers := map[string][]string{}
				for _, s := range args {
					k, v, ok := strings.Cut(s, "=")
					if !ok || k == "" {
						return nil, usagef("revoke_by_stamped_headers: %q: want NAME=VALUE", s)
					}
					headers[k] = append(headers[k], v)
				}
				return ctl.RevokeByStampedHeaders(ctx, headers, opts...)
			}},
		{name: "terminate", args: "SIGNAL ID...", short: "kill the running tasks with these ids with SIGNAL (a terminating revoke)", check: cobra.MinimumNArgs(2), render: renderText,
			run: func(ctx context.Context, ctl *revoke.Controller, args []string, opts []revoke.Option) ([]revoke.Reply, error) {
				return ctl.Revoke(ctx, args[1:], append(opts, revoke.Terminate(), revoke.Signal(args[0]))...)
			}},
	}
}

// checkControlArgs checks what can be checked without a broker.
func checkControlArgs(m remoteMethod, args []string) error {
	switch m.name {
	case "rate_limit":
		if args[1] != "0" && !rateRE.MatchString(args[1]) {
			return usagef("rate_limit: rate %q: want a number of tasks, optionally per second, minute or hour: 10, 10/s, 5/m, 100/h (0: no limit)", args[1])
		}
	case "time_limit":
		_, _, err := timeLimits(args[1:])
		return err
	case "pool_grow", "pool_shrink":
		_, err := countArg(args)
		return err
	case "autoscale":
		maxP, err1 := strconv.Atoi(args[0])
		minP, err2 := strconv.Atoi(args[1])
		if err1 != nil || err2 != nil || maxP < 1 || minP < 0 || minP > maxP {
			return usagef("autoscale MAX MIN: want whole numbers with MAX ≥ 1 and 0 ≤ MIN ≤ MAX, got %q %q", args[0], args[1])
		}
	case "terminate":
		if _, err := revoke.RevokeMessage(args[1:], revoke.Terminate(), revoke.Signal(args[0])); err != nil {
			return invalidArg(err)
		}
	}
	return nil
}

func timeLimits(args []string) (soft, hard time.Duration, err error) {
	soft, err = parseSeconds("soft", args[0])
	if err != nil {
		return 0, 0, usagef("time_limit: SOFT %q: give seconds (10, 1.5)", args[0])
	}
	if len(args) > 1 {
		if hard, err = parseSeconds("hard", args[1]); err != nil {
			return 0, 0, usagef("time_limit: HARD %q: give seconds (10, 1.5)", args[1])
		}
	}
	if hard > 0 && soft > hard {
		return 0, 0, usagef("time_limit: SOFT %s is over HARD %s", fmtDuration(soft), fmtDuration(hard))
	}
	return soft, hard, nil
}

func countArg(args []string) (int, error) {
	if len(args) == 0 {
		return 1, nil
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 {
		return 0, usagef("N %q: give a whole number, at least 1", args[0])
	}
	return n, nil
}

type queueTypeKey struct{}

func queueTypeFromContext(ctx context.Context) string {
	s, _ := ctx.Value(queueTypeKey{}).(string)
	return s
}

func (a *app) controlCommand() *cobra.Command {
	var (
		rf        remoteFlags
		queueType string
	)
	methods := controlMethods()
	parent := &cobra.Command{
		Use:   "control METHOD [ARG...] [flags]",
		Short: "Change the workers' behaviour at run time (celery control)",
		Long: `Send the control METHOD to the workers and print each worker's answer.

Replies are collected until none has come for --timeout (default 1 s);
shutdown and heartbeat get none (workers do not answer them), so they are only
sent. Each command's arguments are checked before connecting. With --json,
each worker's answer is one JSON line: {"worker", "method", "reply", "ok" or
"error"}.

Exit status: 0 when every worker that answered said OK, 1 when one replied
with an error or none replied, 2 usage error, 4 broker unreachable.

Methods: ` + strings.Join(methodNames(methods), ", ") + `.`,
		Example: `  stalk control rate_limit tasks.add 10/m
  stalk control time_limit tasks.render 50 60
  stalk control add_consumer reports -d celery@web1
  stalk control add_consumer jobs --queue-type quorum
  stalk control cancel_consumer reports
  stalk control pool_grow 2
  stalk control shutdown -d celery@web1`,
		Args: cobra.ArbitraryArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			return unknownMethod("control", args, methods)
		}),
	}
	addRemoteFlags(parent.PersistentFlags(), &rf)
	for _, m := range methods {
		m := m
		sub := &cobra.Command{
			Use:               strings.TrimSpace(m.name + " " + m.args),
			Aliases:           aliases(m.name),
			Short:             m.short,
			Args:              usageArgs(m.check, "control "+m.name, m.args),
			ValidArgsFunction: noFileCompletion,
			RunE: runE(func(cmd *cobra.Command, args []string) error {
				if err := checkControlArgs(m, args); err != nil {
					return err
				}
				if queueType != "" && queueType != "classic" && queueType != "quorum" {
					return usagef("--queue-type %q: want classic or quorum", queueType)
				}
				opts, err := rf.options()
				if err != nil {
					return err
				}
				if m.noReply {
					opts = nil
					if len(rf.dest) > 0 {
						opts = append(opts, revoke.Destination(rf.dest...))
					}
				}
				ctx := context.WithValue(cmd.Context(), queueTypeKey{}, queueType)
				ctl, err := a.dialControl(ctx)
				if err != nil {
					return err
				}
				defer ctl.Close()
				replies, err := m.run(ctx, ctl, args, opts)
				if err != nil && errors.Is(err, revoke.ErrInvalidArgument) {
					return invalidArg(err)
				}
				if m.noReply {
					if err != nil {
						return a.controlError(err, 0, rf.timeout)
					}
					to := "every worker"
					if len(rf.dest) > 0 {
						to = strings.Join(rf.dest, ", ")
					}
					if a.g.json {
						a.jsonLine(map[string]any{"event": "sent", "method": m.name, "destination": rf.dest})
					} else {
						fmt.Fprintf(a.stdout, "%s sent to %s (workers do not reply to it)\n", m.name, to)
					}
					return nil
				}
				a.printRemote(m, replies)
				return a.controlError(err, len(replies), rf.timeout)
			}),
		}
		if m.name == "add_consumer" {
			sub.Flags().StringVar(&queueType, "queue-type", "", "declare QUEUE as this `type` (classic or quorum) if the worker has to declare it")
			_ = sub.RegisterFlagCompletionFunc("queue-type", fixedCompletion("classic", "quorum"))
		}
		parent.AddCommand(sub)
	}
	return parent
}

// ---- printing replies -----------------------------------------------------------

// jsonReply is one worker's reply with --json.
type jsonReply struct {
	Worker string          `json:"worker"`
	Method string          `json:"method"`
	OK     string          `json:"ok,omitempty"`
	Error  string          `json:"error,omitempty"`
	Reply  json.RawMessage `json:"reply"`
}

func newJSONReply(method string, r revoke.Reply) jsonReply {
	return jsonReply{Worker: r.Worker, Method: method, OK: r.OK, Error: r.Error, Reply: rawOrNull(r.Value)}
}

func sortReplies(replies []revoke.Reply) {
	sort.Slice(replies, func(i, j int) bool { return replies[i].Worker < replies[j].Worker })
}

// printReplies prints one line per worker reply (revoke, ping) and turns
// the command's error into the exit status.
func (a *app) printReplies(method string, replies []revoke.Reply, err error, wait time.Duration) error {
	sortReplies(replies)
	for _, r := range replies {
		if a.g.json {
			a.jsonLine(newJSONReply(method, r))
			continue
		}
		switch {
		case r.Error != "":
			fmt.Fprintf(a.stdout, "%s: ERROR %s\n", r.Worker, r.Error)
		case r.OK != "":
			fmt.Fprintf(a.stdout, "%s: %s\n", r.Worker, r.OK)
		default:
			fmt.Fprintf(a.stdout, "%s: %s\n", r.Worker, compactRaw(r.Value))
		}
	}
	return a.controlError(err, len(replies), wait)
}

// printNodes prints the workers that answered as 'celery status' does:
// "-> worker: OK" per worker, then "N nodes online.".
func (a *app) printNodes(method string, replies []revoke.Reply, _ bool) {
	sortReplies(replies)
	for _, r := range replies {
		if a.g.json {
			a.jsonLine(newJSONReply(method, r))
			continue
		}
		fmt.Fprintf(a.stdout, "-> %s: %s\n", r.Worker, okOrError(r))
	}
	if !a.g.json && len(replies) > 0 {
		fmt.Fprintf(a.stdout, "\n%s online.\n", plural(len(replies), "node", "nodes"))
	}
}

func okOrError(r revoke.Reply) string {
	if r.Error != "" {
		return "ERROR " + r.Error
	}
	return "OK"
}

// printRemote prints inspect and control replies as Celery does: per
// worker "-> worker: OK" and the reply indented below it; for inspect,
// then "N nodes online.".
func (a *app) printRemote(m remoteMethod, replies []revoke.Reply) {
	sortReplies(replies)
	for _, r := range replies {
		if a.g.json {
			a.jsonLine(newJSONReply(m.name, r))
			continue
		}
		fmt.Fprintf(a.stdout, "-> %s: %s\n", r.Worker, okOrError(r))
		if r.Error != "" {
			continue
		}
		render := m.render
		if render == nil {
			render = renderText
		}
		for _, l := range render(a, r.Value) {
			if l = strings.TrimRight(l, " "); l == "" {
				fmt.Fprintln(a.stdout)
				continue
			}
			fmt.Fprintf(a.stdout, "    %s\n", l)
		}
	}
	if !a.g.json && len(replies) > 0 && m.run == nil {
		fmt.Fprintf(a.stdout, "\n%s online.\n", plural(len(replies), "node", "nodes"))
	}
}

// renderText shows an {"ok": text} reply as its text, anything else as
// JSON.
func renderText(a *app, raw json.RawMessage) []string {
	var ok struct {
		OK *string `json:"ok"`
	}
	if json.Unmarshal(raw, &ok) == nil && ok.OK != nil {
		return strings.Split(strings.TrimRight(*ok.OK, "\n"), "\n")
	}
	return renderJSON(a, raw)
}

// renderJSON shows a reply as indented JSON.
func renderJSON(_ *app, raw json.RawMessage) []string {
	return strings.Split(prettyJSON(raw, true), "\n")
}

// renderList shows a list reply one item per line, Celery's "* item".
func renderList(a *app, raw json.RawMessage) []string {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return renderJSON(a, raw)
	}
	if len(items) == 0 {
		return []string{"- empty -"}
	}
	out := make([]string, len(items))
	for i, it := range items {
		var s string
		if json.Unmarshal(it, &s) == nil {
			out[i] = "* " + s
		} else {
			out[i] = "* " + compactRaw(it)
		}
	}
	return out
}

func (a *app) taskLine(t revoke.TaskInfo) string {
	line := fmt.Sprintf("* %s[%s] args=%s", t.Name, t.ID, compactRaw(t.Args))
	if k := compactRaw(t.Kwargs); k != "{}" && k != "null" && k != "" {
		line += " kwargs=" + k
	}
	if st := t.Started(); !st.IsZero() {
		line += fmt.Sprintf(" running %s", fmtDuration(a.now().Sub(st)))
	}
	if t.DeliveryInfo.RoutingKey != "" {
		line += " queue=" + t.DeliveryInfo.RoutingKey
	}
	return line
}

func renderTasks(a *app, raw json.RawMessage) []string {
	var ts []revoke.TaskInfo
	if err := json.Unmarshal(raw, &ts); err != nil {
		return renderJSON(a, raw)
	}
	if len(ts) == 0 {
		return []string{"- empty -"}
	}
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = a.taskLine(t)
	}
	return out
}

func renderScheduled(a *app, raw json.RawMessage) []string {
	var ts []revoke.ScheduledTask
	if err := json.Unmarshal(raw, &ts); err != nil {
		return renderJSON(a, raw)
	}
	if len(ts) == 0 {
		return []string{"- empty -"}
	}
	out := make([]string, len(ts))
	for i, t := range ts {
		// t.Priority is the worker's timer entry's, not the message's:
		// left to --json.
		out[i] = fmt.Sprintf("%s eta %s", a.taskLine(t.Request), t.ETA)
	}
	return out
}

func renderQueues(a *app, raw json.RawMessage) []string {
	var qs []revoke.QueueDeclaration
	if err := json.Unmarshal(raw, &qs); err != nil {
		return renderJSON(a, raw)
	}
	if len(qs) == 0 {
		return []string{"- empty -"}
	}
	out := make([]string, len(qs))
	for i, q := range qs {
		line := fmt.Sprintf("* %s exchange=%s(%s) key=%s", q.Name, q.Exchange.Name, q.Exchange.Type, q.RoutingKey)
		if t, ok := q.QueueArguments["x-queue-type"].(string); ok {
			line += " " + t
		}
		out[i] = line
	}
	return out
}

func renderQuery(a *app, raw json.RawMessage) []string {
	var q map[string]revoke.TaskQuery
	if err := json.Unmarshal(raw, &q); err != nil {
		return renderJSON(a, raw)
	}
	if len(q) == 0 {
		return []string{"- empty -"}
	}
	var out []string
	for _, id := range sortedKeys(q) {
		out = append(out, fmt.Sprintf("%s %s", q[id].State, strings.TrimPrefix(a.taskLine(q[id].Info), "* ")))
	}
	return out
}

// controlError says what a control command's error means, in one line.
func (a *app) controlError(err error, answered int, wait time.Duration) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	var we *revoke.WorkerError
	if errors.As(err, &we) {
		return fmt.Errorf("worker %s replied with an error: %s", we.Worker, we.Message)
	}
	if errors.Is(err, revoke.ErrNoReply) || errors.Is(err, revoke.ErrNoWorker) {
		if answered == 0 {
			return fmt.Errorf("no worker replied within %s; check that workers run against this broker and vhost (--broker), or raise --timeout", fmtDuration(wait))
		}
		return fmt.Errorf("%s", strings.TrimPrefix(oneLine(err.Error()), "stalk: "))
	}
	return err
}

// dialControl connects a remote-control Controller within
// --connect-timeout.
func (a *app) dialControl(ctx context.Context) (*revoke.Controller, error) {
	cctx, cancel := context.WithTimeout(ctx, a.g.connectTimeout)
	defer cancel()
	ctl, err := revoke.Dial(cctx, a.url(), revoke.WithLogger(a.log), revoke.WithConnectionName("stalk-cli-"+strings.ReplaceAll(a.cmd, " ", "-")))
	if err != nil {
		return nil, a.connectError(ctx, err)
	}
	a.connected()
	return ctl, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func compactRaw(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	return prettyJSON(raw, false)
}
