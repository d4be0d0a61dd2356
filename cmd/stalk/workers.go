package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stalk-dev/stalk/revoke"
)

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
