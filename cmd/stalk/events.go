package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/result"
)

func (a *app) eventsCommand() *cobra.Command {
	var (
		tasks, heartbeats bool
		duration, refresh time.Duration
	)
	cmd := &cobra.Command{
		Use:   "events [flags]",
		Short: "Follow Celery's event stream, or a live table of tasks and workers (celery events)",
		Long: `Follow Celery's event stream: one line per event with its time, type, task,
worker and state. Workers send task events only when started with -E (or
after 'stalk control enable_events').

With --tasks, show a table instead, refreshed in place when stdout is a
terminal and printed once at the end otherwise: the workers (alive or offline
by their heartbeats, tasks active now, tasks processed, last heartbeat), then
the tasks, most recent first. --duration stops after the given time; Ctrl-C
stops too. Worker heartbeats (every 2 s per worker) are left out of the stream
unless --heartbeats. With --json, each event is one JSON object with the same
fields and the event as the worker sent it; with --tasks --json, one object
per worker ("event": "worker") and per task ("event": "task") at the end.`,
		Example: `  stalk events
  stalk events --tasks
  stalk events --duration 10 > events.log
  stalk -j events | jq -c 'select(.type == "task-failed")'`,
		Args: noArgs("events", "see --help for its flags"),
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			if refresh <= 0 {
				return usagef("--refresh must be positive")
			}
			return a.runEvents(cmd.Context(), tasks, heartbeats, duration, refresh)
		}),
	}
	fs := cmd.Flags()
	fs.BoolVar(&tasks, "tasks", false, "show a table of workers and task states instead of the event stream")
	secondsFlag(fs, &duration, "duration", "", 0, "stop after this many `seconds` (default: until Ctrl-C)")
	fs.BoolVar(&heartbeats, "heartbeats", false, "include worker-heartbeat events in the stream")
	secondsFlag(fs, &refresh, "refresh", "", 500*time.Millisecond, "with --tasks on a terminal: redraw the table this often, in `seconds`")
	return cmd
}

func (a *app) runEvents(ctx context.Context, tasks, heartbeats bool, duration, refresh time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, a.g.connectTimeout)
	recv, err := events.Dial(cctx, a.url(), events.WithLogger(a.log), events.ConnectionName("stalk-cli-events"))
	cancel()
	if err != nil {
		return a.connectError(ctx, err)
	}
	a.connected()
	defer recv.Close()

	runCtx := ctx
	if duration > 0 {
		var stop context.CancelFunc
		runCtx, stop = context.WithTimeout(ctx, duration)
		defer stop()
	}
	st := events.NewState()
	var mu sync.Mutex // serialises writes to stdout
	live := tasks && a.stdoutTTY && !a.g.json
	handler := func(ev events.Event) {
		st.Apply(ev)
		if tasks {
			return
		}
		h := ev.EventHeader()
		if h.Type == events.TypeWorkerHeartbeat && !heartbeats {
			return
		}
		line := eventLine(ev, st, a.now())
		mu.Lock()
		defer mu.Unlock()
		if a.g.json {
			a.jsonLine(line)
			return
		}
		fmt.Fprintln(a.stdout, line.text())
	}
	sub, err := recv.Subscribe(runCtx, handler)
	if err != nil {
		return fmt.Errorf("subscribe to events: %w", err)
	}
	if !a.g.json {
		fmt.Fprintf(a.stderr, "listening for events on %s (Ctrl-C to stop)\n", redactURLs(a.url()))
	}
	if live {
		t := time.NewTicker(refresh)
		defer t.Stop()
		for done := false; !done; {
			select {
			case <-t.C:
			case <-sub.Closed():
				done = true
			}
			drawTables(a.stdout, st.Workers(), st.Tasks(nil), a.now(), true)
		}
	} else {
		<-sub.Closed()
	}
	// Close waits for the handler to return: nothing writes after this.
	_ = recv.Close()
	if tasks && !live {
		ws, ts := st.Workers(), st.Tasks(nil)
		if a.g.json {
			for _, w := range ws {
				a.jsonLine(newJSONWorker(w))
			}
			for _, t := range ts {
				a.jsonLine(newJSONTask(t))
			}
		} else {
			drawTables(a.stdout, ws, ts, a.now(), false)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

// jsonEvent is one event line, as text or JSON.
type jsonEvent struct {
	Time   time.Time       `json:"time"`
	Type   string          `json:"type"`
	Task   string          `json:"task,omitempty"`
	Name   string          `json:"name,omitempty"`
	Worker string          `json:"worker"`
	State  string          `json:"state,omitempty"`
	Info   string          `json:"-"`
	Event  json.RawMessage `json:"event,omitempty"`
}

func (e jsonEvent) text() string {
	task := "-"
	if e.Task != "" {
		task = e.Task
		if e.Name != "" {
			task = e.Name + "[" + e.Task + "]"
		}
	}
	state := e.State
	if state == "" {
		state = "-"
	}
	s := fmt.Sprintf("%s %-16s %s %s %s", e.Time.Local().Format("15:04:05.000"), e.Type, task, e.Worker, state)
	if e.Info != "" {
		s += " " + e.Info
	}
	return s
}

// eventLine describes ev, with the task's name and state from st (which
// has merged ev already).
func eventLine(ev events.Event, st *events.State, now time.Time) jsonEvent {
	h := ev.EventHeader()
	at := h.Time
	if at.IsZero() {
		at = h.Received
	}
	if at.IsZero() {
		at = now
	}
	line := jsonEvent{Time: at, Type: h.Type, Worker: h.Hostname, Event: h.Raw}
	if te, ok := ev.(events.TaskEvent); ok && events.IsTask(h.Type) {
		line.Task = te.TaskID()
		line.State = string(events.StateFor(h.Type))
		if t, ok := st.Task(te.TaskID()); ok {
			line.Name = t.Name
		}
	}
	switch e := ev.(type) {
	case *events.TaskReceived:
		line.Info = fmt.Sprintf("args=%s kwargs=%s", e.Args, e.Kwargs)
	case *events.TaskSucceeded:
		line.Info = fmt.Sprintf("result=%s runtime=%s", clipText(e.Result, 80), fmtDuration(e.Runtime))
	case *events.TaskFailed:
		line.Info = "exception=" + clipText(e.Exception, 120)
	case *events.TaskRetried:
		line.Info = "exception=" + clipText(e.Exception, 120)
	case *events.TaskRevoked:
		var parts []string
		if e.Terminated {
			parts = append(parts, "terminated")
			if e.Signum != "" {
				parts = append(parts, "signal="+e.Signum)
			}
		}
		if e.Expired {
			parts = append(parts, "expired")
		}
		line.Info = strings.Join(parts, " ")
	case *events.WorkerOnline:
		line.State = "ONLINE"
	case *events.WorkerOffline:
		line.State = "OFFLINE"
	case *events.WorkerHeartbeat:
		line.State = "ALIVE"
		line.Info = fmt.Sprintf("active=%d processed=%d", e.Active, e.Processed)
	}
	return line
}

func clipText(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}

// jsonTask is one task of --tasks --json.
type jsonTask struct {
	Event     string    `json:"event"` // "task"
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	State     string    `json:"state"`
	Worker    string    `json:"worker,omitempty"`
	Args      string    `json:"args,omitempty"`
	Kwargs    string    `json:"kwargs,omitempty"`
	Result    string    `json:"result,omitempty"`
	Exception string    `json:"exception,omitempty"`
	Runtime   float64   `json:"runtime,omitempty"`
	Updated   time.Time `json:"updated"`
}

func newJSONTask(t events.Task) jsonTask {
	return jsonTask{Event: "task", ID: t.ID, Name: t.Name, State: string(t.State), Worker: t.Worker, Args: t.Args, Kwargs: t.Kwargs,
		Result: t.Result, Exception: t.Exception, Runtime: t.Runtime.Seconds(), Updated: t.Updated}
}

// taskInfo is what the table shows for a task: its result once it
// succeeded (an exception it was retried for earlier stays in the state,
// but is no longer news), its exception while it is retried or after it
// failed or was revoked, and otherwise whichever the stream carried.
func taskInfo(t events.Task) string {
	switch t.State {
	case result.Success:
		return t.Result
	case result.Failure, result.Retry, result.Revoked:
		return t.Exception
	}
	if t.Exception != "" {
		return t.Exception
	}
	return t.Result
}

// maxTableRows bounds the refreshing table to what fits a screen.
const maxTableRows = 40

// jsonWorker is one worker of --tasks --json.
type jsonWorker struct {
	Event         string     `json:"event"` // "worker"
	Hostname      string     `json:"hostname"`
	Alive         bool       `json:"alive"`
	Online        bool       `json:"online"`
	Active        int        `json:"active"`
	Processed     int        `json:"processed"`
	LastHeartbeat *time.Time `json:"last_heartbeat"`
	Software      string     `json:"software,omitempty"`
}

func newJSONWorker(w events.Worker) jsonWorker {
	out := jsonWorker{Event: "worker", Hostname: w.Hostname, Alive: w.Alive, Online: w.Online, Active: w.Active, Processed: w.Processed}
	if n := len(w.Heartbeats); n > 0 {
		out.LastHeartbeat = &w.Heartbeats[n-1]
	}
	if w.SWIdent != "" {
		out.Software = w.SWIdent + " " + w.SWVer
	}
	return out
}

// workerStatus says whether a worker is alive by its heartbeats.
func workerStatus(w events.Worker) string {
	switch {
	case w.Alive:
		return "alive"
	case !w.Online:
		return "offline"
	default:
		return "lost" // no heartbeat for two periods
	}
}

// drawTables prints the worker pane and the task table. With clear, it
// first clears the screen, for the refreshing view.
func drawTables(w io.Writer, ws []events.Worker, ts []events.Task, now time.Time, clear bool) {
	var b strings.Builder
	if clear {
		b.WriteString("\x1b[H\x1b[2J")
		fmt.Fprintf(&b, "stalk events --tasks  %s  %s, %s (Ctrl-C to stop)\n\n", now.Local().Format("15:04:05"),
			plural(len(ws), "worker", "workers"), plural(len(ts), "task", "tasks"))
	}
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tSTATUS\tACTIVE\tPROCESSED\tHEARTBEAT")
	if len(ws) == 0 {
		fmt.Fprintln(tw, "(none seen yet)\t\t\t\t")
	}
	for i := len(ws) - 1; i >= 0; i-- {
		wk := ws[i]
		hb := "-"
		if n := len(wk.Heartbeats); n > 0 {
			hb = fmtDuration(now.Sub(wk.Heartbeats[n-1])) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", wk.Hostname, workerStatus(wk), wk.Active, wk.Processed, hb)
	}
	_ = tw.Flush()
	b.WriteString("\n")
	drawTaskTable(&b, ts, now, clear)
	_, _ = io.WriteString(w, b.String())
}

// drawTaskTable prints the tasks, most recently updated first. With
// clear (the refreshing view), at most maxTableRows of them.
func drawTaskTable(w io.Writer, ts []events.Task, now time.Time, clear bool) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UPDATED\tSTATE\tTASK\tID\tWORKER\tRUNTIME\tINFO")
	shown := 0
	for i := len(ts) - 1; i >= 0; i-- {
		if clear && shown == maxTableRows {
			break
		}
		t := ts[i]
		runtime := "-"
		if t.Runtime > 0 {
			runtime = fmtDuration(t.Runtime)
		}
		info := taskInfo(t)
		name, worker := t.Name, t.Worker
		if name == "" {
			name = "?"
		}
		if worker == "" {
			worker = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Updated.Local().Format("15:04:05"), t.State, name, t.ID, worker, runtime, clipText(info, 40))
		shown++
	}
	_ = tw.Flush()
	if clear && len(ts) > shown {
		fmt.Fprintf(&b, "… and %d older\n", len(ts)-shown)
	}
	_, _ = io.WriteString(w, b.String())
}
