package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/stalk-dev/stalk/revoke"
)

// Remote control: revoke, ping and inspect, over Celery's celery.pidbox
// broadcast.

var revokeSpec = cmdSpec{
	name:     "revoke",
	synopsis: "revoke ID... [--terminate] [--signal SIG] [--destination W] [--wait D]",
	about: `Ask the workers to revoke the tasks with the given ids, and print their replies.

A worker discards a revoked task when it meets it and publishes a REVOKED
result. With --terminate it also kills the task if it is running, with
--signal (SIGTERM by default). Revokes live in the workers' memory: a worker
that restarts forgets them unless it runs with --statedb.

Replies are collected until none has come for --wait (default 1s); --wait 0
only broadcasts the revoke and prints nothing. Exit status: 0 when every reply
is OK, 1 when a worker replied with an error or none replied, 2 usage error,
4 broker unreachable.`,
	examples: `
stalk revoke 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f
stalk revoke 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --terminate --wait 2s
stalk revoke ID1 ID2 --terminate --signal SIGKILL --destination celery@web1`,
}

var pingSpec = cmdSpec{
	name:     "ping",
	synopsis: "ping [--destination W] [--timeout D]",
	about: `Ask the workers to answer, and print one line per worker that did.

Replies are collected until none has come for --timeout. Exit status: 0 when a
worker answered (every --destination, when given), 1 when none did, 4 broker
unreachable.`,
	examples: `
stalk ping
stalk ping --destination celery@web1,celery@web2 --timeout 3s
stalk --json ping`,
}

var inspectSpec = cmdSpec{
	name:     "inspect",
	synopsis: "inspect active|revoked [--destination W] [--timeout D]",
	about: `Ask the workers what they are running (active) or which task ids they hold as
revoked (revoked), and print the answers per worker.

Replies are collected until none has come for --timeout. Exit status: 0 when a
worker answered, 1 when none did or one replied with an error, 2 usage error,
4 broker unreachable.`,
	examples: `
stalk inspect active
stalk inspect revoked --destination celery@web1
stalk --json inspect active | jq .`,
}

func runRevoke(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet(revokeSpec)
	terminate := fs.Bool("terminate", false, "kill the task if it is running")
	sig := fs.String("signal", "", "signal --terminate sends, by name or number: SIGTERM (default), SIGKILL, 9")
	var dest listFlag
	fs.Var(&dest, "destination", "only these `workers` (comma-separated or repeated), e.g. celery@web1")
	wait := fs.Duration("wait", time.Second, "collect replies until none has come for this `duration`; 0 collects none")
	ids, err := a.parse(fs, revokeSpec, args)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return usagef("give at least one task ID, e.g. 'stalk revoke 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f'")
	}
	if *sig != "" && !*terminate {
		return usagef("--signal needs --terminate: a signal is only sent to running tasks that are terminated")
	}
	if *wait < 0 {
		return usagef("--wait must not be negative")
	}
	opts := []revoke.Option{}
	if *terminate {
		opts = append(opts, revoke.Terminate())
	}
	if *sig != "" {
		opts = append(opts, revoke.Signal(*sig))
	}
	if len(dest) > 0 {
		opts = append(opts, revoke.Destination(dest...))
	}
	if *wait > 0 {
		opts = append(opts, revoke.Wait(*wait))
	}
	ctl, err := a.dialControl(ctx)
	if err != nil {
		return err
	}
	defer ctl.Close()
	replies, err := ctl.Revoke(ctx, ids, opts...)
	if err != nil && errors.Is(err, revoke.ErrInvalidArgument) {
		return usagef("%s", strings.TrimPrefix(err.Error(), "stalk: "))
	}
	if *wait == 0 && err == nil {
		if !a.g.json {
			fmt.Fprintf(a.stderr, "revoke of %d task(s) sent; not waiting for replies\n", len(ids))
		}
		return nil
	}
	return a.printReplies(replies, err, *wait)
}

func runPing(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet(pingSpec)
	var dest listFlag
	fs.Var(&dest, "destination", "only these `workers` (comma-separated or repeated)")
	timeout := fs.Duration("timeout", time.Second, "collect replies until none has come for this `duration`")
	pos, err := a.parse(fs, pingSpec, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("ping takes no arguments; use --destination to name workers")
	}
	opts, err := queryOptions(dest, *timeout)
	if err != nil {
		return err
	}
	ctl, err := a.dialControl(ctx)
	if err != nil {
		return err
	}
	defer ctl.Close()
	replies, err := ctl.Ping(ctx, opts...)
	return a.printReplies(replies, err, *timeout)
}

func runInspect(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet(inspectSpec)
	var dest listFlag
	fs.Var(&dest, "destination", "only these `workers` (comma-separated or repeated)")
	timeout := fs.Duration("timeout", time.Second, "collect replies until none has come for this `duration`")
	pos, err := a.parse(fs, inspectSpec, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || (pos[0] != "active" && pos[0] != "revoked") {
		return usagef("give what to inspect: 'stalk inspect active' or 'stalk inspect revoked'")
	}
	opts, err := queryOptions(dest, *timeout)
	if err != nil {
		return err
	}
	ctl, err := a.dialControl(ctx)
	if err != nil {
		return err
	}
	defer ctl.Close()
	if pos[0] == "active" {
		active, err := ctl.Active(ctx, opts...)
		for _, w := range sortedKeys(active) {
			ts := active[w]
			if a.g.json {
				if ts == nil {
					ts = []revoke.TaskInfo{}
				}
				if werr := writeJSONLine(a.stdout, map[string]any{"worker": w, "active": ts}); werr != nil {
					return werr
				}
				continue
			}
			fmt.Fprintf(a.stdout, "%s: %s\n", w, plural(len(ts), "active task", "active tasks"))
			for _, t := range ts {
				line := fmt.Sprintf("  %s[%s] args=%s", t.Name, t.ID, compactRaw(t.Args))
				if k := compactRaw(t.Kwargs); k != "{}" && k != "null" && k != "" {
					line += " kwargs=" + k
				}
				if st := t.Started(); !st.IsZero() {
					line += fmt.Sprintf(" running %s", fmtDuration(a.now().Sub(st)))
				}
				fmt.Fprintln(a.stdout, line)
			}
		}
		return a.controlError(err, len(active), *timeout)
	}
	revoked, err := ctl.RevokedIDs(ctx, opts...)
	for _, w := range sortedKeys(revoked) {
		ids := revoked[w]
		if a.g.json {
			if ids == nil {
				ids = []string{}
			}
			if werr := writeJSONLine(a.stdout, map[string]any{"worker": w, "revoked": ids}); werr != nil {
				return werr
			}
			continue
		}
		fmt.Fprintf(a.stdout, "%s: %s\n", w, plural(len(ids), "revoked id", "revoked ids"))
		for _, id := range ids {
			fmt.Fprintf(a.stdout, "  %s\n", id)
		}
	}
	return a.controlError(err, len(revoked), *timeout)
}

func queryOptions(dest listFlag, timeout time.Duration) ([]revoke.Option, error) {
	if timeout <= 0 {
		return nil, usagef("--timeout must be positive")
	}
	opts := []revoke.Option{revoke.Wait(timeout)}
	if len(dest) > 0 {
		opts = append(opts, revoke.Destination(dest...))
	}
	return opts, nil
}

// printReplies prints one line per worker reply and turns the command's
// error into the exit status.
func (a *app) printReplies(replies []revoke.Reply, err error, wait time.Duration) error {
	sort.Slice(replies, func(i, j int) bool { return replies[i].Worker < replies[j].Worker })
	for _, r := range replies {
		if a.g.json {
			line := map[string]any{"worker": r.Worker}
			if r.OK != "" {
				line["ok"] = r.OK
			}
			if r.Error != "" {
				line["error"] = r.Error
			}
			if r.OK == "" && r.Error == "" && len(r.Value) > 0 {
				line["value"] = r.Value
			}
			if werr := writeJSONLine(a.stdout, line); werr != nil {
				return werr
			}
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
	if errors.Is(err, revoke.ErrNoReply) {
		if answered == 0 {
			return fmt.Errorf("no worker replied within %s; check that workers run against this broker and vhost (--broker), or raise the wait", wait)
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
	ctl, err := revoke.Dial(cctx, a.url(), revoke.WithLogger(a.log), revoke.WithConnectionName("stalk-cli-"+a.cmd))
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
