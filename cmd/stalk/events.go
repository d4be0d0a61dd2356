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

	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/result"
)

var eventsSpec = cmdSpec{
	name:     "events",
	synopsis: "events [--tasks] [--duration D] [--heartbeats]",
	about: `Follow Celery's event stream: one line per event with its time, type, task,
worker and state. Workers send task events only when started with -E (or
after 'celery control enable_events').

With --tasks, show a table of task states instead, refreshed in place when
stdout is a terminal, and printed once at the end otherwise. --duration stops
after the given time; Ctrl-C stops too. Worker heartbeats (every 2 s per
worker) are left out unless --heartbeats. With --json, each event is one JSON
object with the same fields and the event as the worker sent it.`,
	examples: `
stalk events
stalk events --tasks
stalk events --duration 10s > events.log
stalk --json events | jq -c 'select(.type == "task-failed")'`,
}

func runEvents(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet(eventsSpec)
	tasks := fs.Bool("tasks", false, "show a table of task states instead of the event stream")
	duration := fs.Duration("duration", 0, "stop after this `duration` (default: until Ctrl-C)")
	heartbeats := fs.Bool("heartbeats", false, "include worker-heartbeat events")
	refresh := fs.Duration("refresh", 500*time.Millisecond, "with --tasks on a terminal: redraw the table this often")
	pos, err := a.parse(fs, eventsSpec, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("events takes no arguments")
	}
	if *duration < 0 || *refresh <= 0 {
		return usagef("--duration must not be negative and --refresh must be positive")
	}
	cctx, cancel := context.WithTimeout(ctx, a.g.connectTimeout)
	recv, err := events.Dial(cctx, a.url(), events.WithLogger(a.log), events.ConnectionName("stalk-cli-events"))
	cancel()
	if err != nil {
		return a.connectError(ctx, err)
	}
	a.connected()
	defer recv.Close()

	runCtx := ctx
	if *duration > 0 {
		var stop context.CancelFunc
		runCtx, stop = context.WithTimeout(ctx, *duration)
		defer stop()
	}
	st := events.NewState()
	var mu sync.Mutex // serialises writes to stdout
	live := *tasks && a.stdoutTTY && !a.g.json
	handler := func(ev events.Event) {
		st.Apply(ev)
		if *tasks {
			return
		}
		h := ev.EventHeader()
		if h.Type == events.TypeWorkerHeartbeat && !*heartbeats {
			return
		}
		line := eventLine(ev, st, a.now())
		mu.Lock()
		defer mu.Unlock()
		if a.g.json {
			_ = writeJSONLine(a.stdout, line)
			return
		}
		fmt.Fprintln(a.stdout, line.text())
	}
	sub, err := recv.Subscribe(runCtx, handler)
	if err != nil {
		return fmt.Errorf("subscribe to events: %w", err)
	}
	if !a.g.json {
		fmt.Fprintf(a.stderr, "listening for events on %s (Ctrl-C to stop)\n", redactedURL(a))
	}
	if live {
		t := time.NewTicker(*refresh)
		defer t.Stop()
		for done := false; !done; {
			select {
			case <-t.C:
			case <-sub.Closed():
				done = true
			}
			drawTaskTable(a.stdout, st.Tasks(nil), a.now(), true)
		}
	} else {
		<-sub.Closed()
	}
	// Close waits for the handler to return: nothing writes after this.
	_ = recv.Close()
	if *tasks && !live {
		ts := st.Tasks(nil)
		if a.g.json {
			for _, t := range ts {
				if err := writeJSONLine(a.stdout, newJSONTask(t)); err != nil {
					return err
				}
			}
		} else {
			drawTaskTable(a.stdout, ts, a.now(), false)
		}
	}
	return nil
}

func redactedURL(a *app) string { return a.redact(a.url()) }

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
	return jsonTask{ID: t.ID, Name: t.Name, State: string(t.State), Worker: t.Worker, Args: t.Args, Kwargs: t.Kwargs,
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

// drawTaskTable prints the tasks, most recently updated first. With
// clear, it first clears the screen, for the refreshing view.
func drawTaskTable(w io.Writer, ts []events.Task, now time.Time, clear bool) {
	var b strings.Builder
	if clear {
		b.WriteString("\x1b[H\x1b[2J")
		fmt.Fprintf(&b, "stalk events --tasks  %s  %s (Ctrl-C to stop)\n\n", now.Local().Format("15:04:05"), plural(len(ts), "task", "tasks"))
	}
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
