package main

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stalk-dev/stalk/revoke"
)

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
