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

// renderEach decodes a list reply into []T and shows each item on a line
// of its own; a reply of another shape is shown as JSON.
func renderEach[T any](a *app, raw json.RawMessage, line func(T) string) []string {
	var items []T
	if err := json.Unmarshal(raw, &items); err != nil {
		return renderJSON(a, raw)
	}
	if len(items) == 0 {
		return []string{"- empty -"}
	}
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = line(it)
	}
	return out
}

// renderList shows a list reply one item per line, Celery's "* item".
func renderList(a *app, raw json.RawMessage) []string {
	return renderEach(a, raw, func(it json.RawMessage) string {
		var s string
		if json.Unmarshal(it, &s) == nil {
			return "* " + s
		}
		return "* " + compactRaw(it)
	})
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
	return renderEach(a, raw, a.taskLine)
}

func renderScheduled(a *app, raw json.RawMessage) []string {
	return renderEach(a, raw, func(t revoke.ScheduledTask) string {
		// t.Priority is the worker's timer entry's, not the message's:
		// left to --json.
		return fmt.Sprintf("%s eta %s", a.taskLine(t.Request), t.ETA)
	})
}

func renderQueues(a *app, raw json.RawMessage) []string {
	return renderEach(a, raw, func(q revoke.QueueDeclaration) string {
		line := fmt.Sprintf("* %s exchange=%s(%s) key=%s", q.Name, q.Exchange.Name, q.Exchange.Type, q.RoutingKey)
		if t, ok := q.QueueArguments["x-queue-type"].(string); ok {
			line += " " + t
		}
		return line
	})
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
