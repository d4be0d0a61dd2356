package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
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
