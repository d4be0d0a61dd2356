package eventstest

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

func TestEventsTaskLifecycle(t *testing.T) {
	r := receiver(t)
	p := newPublisher(t)
	id := uuid.NewString()
	rec := record(t, r, id)
	st := events.NewState()
	sub, err := r.Subscribe(harness.Ctx(t, time.Minute), st.Apply)
	require.NoError(t, err)
	defer sub.Stop()

	m := taskMsg{id: id, name: "tasks.add", args: []any{2, 3}, argsrepr: "(2, 3)"}
	// task-sent goes first here so that the order below is deterministic;
	// Celery publishes it right after the task.
	sentEv := p.sendTaskSent(t, m)
	p.sendTask(t, m)
	rec.waitFor(t, id, events.TypeTaskSucceeded, 30*time.Second)
	require.Equal(t, []string{"task-sent", "task-received", "task-started", "task-succeeded"}, rec.types(id))

	sent := rec.find(id, events.TypeTaskSent).(*events.TaskSent)
	require.Equal(t, sentEv.Hostname, sent.Hostname)
	require.Equal(t, "tasks.add", sent.Name)
	require.Equal(t, worker.Queue, sent.Queue)

	rcv := rec.find(id, events.TypeTaskReceived).(*events.TaskReceived)
	require.Equal(t, worker.Hostname, rcv.Hostname)
	require.Equal(t, "tasks.add", rcv.Name)
	require.Equal(t, "(2, 3)", rcv.Args)
	require.Equal(t, "{}", rcv.Kwargs)
	require.Equal(t, id, rcv.RootID)
	require.Equal(t, "", rcv.ParentID)
	require.Equal(t, 0, rcv.Retries)
	require.Equal(t, worker.Pid(), rcv.PID)
	require.Positive(t, rcv.Clock)
	require.WithinDuration(t, time.Now(), rcv.Time, time.Minute)
	require.WithinDuration(t, rcv.Received, rcv.Time, 5*time.Second)
	require.Equal(t, events.LocalUTCOffset(), rcv.UTCOffset)

	started := rec.find(id, events.TypeTaskStarted).(*events.TaskStarted)
	require.Greater(t, started.Clock, rcv.Clock)
	ok := rec.find(id, events.TypeTaskSucceeded).(*events.TaskSucceeded)
	require.Equal(t, "5", ok.Result)
	require.Positive(t, ok.Runtime)
	require.False(t, ok.Time.Before(started.Time))

	require.Eventually(t, func() bool { tk, _ := st.Task(id); return tk.State == result.Success }, 10*time.Second, 10*time.Millisecond)
	tk, _ := st.Task(id)
	require.Equal(t, worker.Hostname, tk.Worker)
	require.Equal(t, sentEv.Hostname, tk.Client)
	require.Equal(t, "tasks.add", tk.Name)
	require.Equal(t, "5", tk.Result)
	for _, at := range []time.Time{tk.Sent, tk.Received, tk.Started, tk.Succeeded} {
		require.False(t, at.IsZero())
	}
	require.True(t, st.Alive(worker.Hostname), "task events count as heartbeats")
}

func TestEventsTaskFailed(t *testing.T) {
	r := receiver(t, events.TaskEvents())
	p := newPublisher(t)
	id := uuid.NewString()
	rec := record(t, r, id)
	p.sendTask(t, taskMsg{id: id, name: "tasks.boom", args: []any{"bad"}, argsrepr: "('bad',)"})
	failed := rec.waitFor(t, id, events.TypeTaskFailed, 30*time.Second).(*events.TaskFailed)
	require.Equal(t, "ValueError('bad')", failed.Exception)
	require.Contains(t, failed.Traceback, "Traceback (most recent call last)")
	require.Contains(t, failed.Traceback, "ValueError: bad")
	require.Equal(t, worker.Hostname, failed.Hostname)
	require.Equal(t, []string{"task-received", "task-started", "task-failed"}, rec.types(id))
}

func TestEventsTaskRetried(t *testing.T) {
	r := receiver(t, events.TaskEvents())
	p := newPublisher(t)
	id := uuid.NewString()
	rec := record(t, r, id)
	st := events.NewState()
	sub, err := r.Subscribe(harness.Ctx(t, time.Minute), st.Apply, events.OnlyTasks())
	require.NoError(t, err)
	defer sub.Stop()
	p.sendTask(t, taskMsg{id: id, name: "tasks.flaky", args: []any{2}, argsrepr: "(2,)"})
	ok := rec.waitFor(t, id, events.TypeTaskSucceeded, 30*time.Second).(*events.TaskSucceeded)
	require.Equal(t, "'ok after 2'", ok.Result)
	types := rec.types(id)
	retries := 0
	for _, typ := range types {
		if typ == events.TypeTaskRetried {
			retries++
		}
	}
	require.Equal(t, 2, retries, "events: %v", types)
	retried := rec.find(id, events.TypeTaskRetried).(*events.TaskRetried)
	require.Equal(t, "RuntimeError('try again')", retried.Exception)
	require.Contains(t, retried.Traceback, "Retry")
	require.Eventually(t, func() bool { tk, _ := st.Task(id); return tk.State == result.Success }, 10*time.Second, 10*time.Millisecond)
	tk, _ := st.Task(id)
	require.Equal(t, 2, tk.Retries, "retries from the last task-received")
	require.Equal(t, "RuntimeError('try again')", tk.Exception)
	require.False(t, tk.Retried.IsZero())
}

func TestEventsTaskRevokedExpired(t *testing.T) {
	r := receiver(t, events.TaskEvents())
	p := newPublisher(t)
	id := uuid.NewString()
	rec := record(t, r, id)
	st := events.NewState()
	sub, err := r.Subscribe(harness.Ctx(t, time.Minute), st.Apply, events.OnlyTasks())
	require.NoError(t, err)
	defer sub.Stop()
	past := time.Now().Add(-time.Hour).UTC().Format("2006-01-02T15:04:05.000000+00:00")
	p.sendTask(t, taskMsg{id: id, name: "tasks.add", args: []any{1, 1}, argsrepr: "(1, 1)", expires: past})
	rev := rec.waitFor(t, id, events.TypeTaskRevoked, 30*time.Second).(*events.TaskRevoked)
	require.True(t, rev.Expired)
	require.False(t, rev.Terminated)
	require.Equal(t, worker.Hostname, rev.Hostname)
	require.Eventually(t, func() bool { tk, _ := st.Task(id); return tk.State == result.Revoked }, 10*time.Second, 10*time.Millisecond)
	tk, _ := st.Task(id)
	require.True(t, tk.Expired)
	require.True(t, tk.Ready())
	require.NotContains(t, rec.types(id), events.TypeTaskStarted)
}

func TestEventsWorkerLifecycle(t *testing.T) {
	r := receiver(t, events.WorkerEvents())
	var offset atomic.Int64 // added to the State's clock
	st := events.NewState(events.WithClock(func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }))
	var mu sync.Mutex
	var seen []string
	name := "evw-" + harness.RunID
	host, _ := os.Hostname()
	nodename := name + "@" + host
	sub, err := r.Subscribe(harness.Ctx(t, 2*time.Minute), func(ev events.Event) {
		// Applied before it is counted, so that a count the test waits
		// for is already in st.
		st.Apply(ev)
		mu.Lock()
		seen = append(seen, ev.EventHeader().Type)
		mu.Unlock()
	}, events.Hostnames(nodename))
	require.NoError(t, err)
	defer sub.Stop()
	count := func(typ string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range seen {
			if s == typ {
				n++
			}
		}
		return n
	}

	w, err := harness.StartWorker(harness.WorkerConfig{Name: name, Concurrency: 1, Pool: "solo"})
	require.NoError(t, err)
	defer w.Kill()
	require.Equal(t, nodename, w.Hostname)

	require.Eventually(t, func() bool { return count(events.TypeWorkerOnline) == 1 }, 20*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return count(events.TypeWorkerHeartbeat) >= 2 }, 20*time.Second, 10*time.Millisecond)
	wk, ok := st.Worker(nodename)
	require.True(t, ok)
	require.True(t, wk.Alive)
	require.True(t, wk.Online)
	require.Equal(t, w.Pid(), wk.PID)
	// 2 s, the worker's heartbeat interval; 5 when the latest heartbeat
	// answered a receiver's "heartbeat" broadcast (another suite's receiver
	// starting meanwhile), which Celery sends with freq 5.
	require.Contains(t, []float64{2.0, 5.0}, wk.Freq)
	require.Equal(t, "py-celery", wk.SWIdent)
	require.Equal(t, harness.CeleryVersion(), wk.SWVer)
	require.Len(t, wk.Loadavg, 3)
	require.GreaterOrEqual(t, len(wk.Heartbeats), 3)

	// Without sleeping: move the State's clock past last heartbeat +
	// 2·freq, and the worker is no longer alive.
	expires := wk.HeartbeatExpires()
	require.WithinDuration(t, wk.Heartbeats[len(wk.Heartbeats)-1].Add(4*time.Second), expires, time.Millisecond)
	// 2·freq + 6 s ahead, so that a heartbeat arriving meanwhile does not
	// make this racy.
	offset.Store(int64(time.Until(expires) + 6*time.Second))
	require.False(t, st.Alive(nodename), "no heartbeat for 2·freq")
	offset.Store(0)
	require.True(t, st.Alive(nodename))

	w.Stop()
	require.Eventually(t, func() bool { return count(events.TypeWorkerOffline) == 1 }, 20*time.Second, 10*time.Millisecond)
	require.False(t, st.Alive(nodename), "worker-offline clears the heartbeats")
	wk, _ = st.Worker(nodename)
	require.False(t, wk.Online)
	require.Empty(t, wk.Heartbeats)
}

// A worker killed with SIGKILL sends no worker-offline: it turns not alive
// in real time once its heartbeats stop (2·freq after the last one).
func TestEventsWorkerKilledStopsBeingAlive(t *testing.T) {
	r := receiver(t, events.WorkerEvents())
	st := events.NewState()
	var heartbeats, offline atomic.Int32
	name := "evk-" + harness.RunID
	host, _ := os.Hostname()
	nodename := name + "@" + host
	sub, err := r.Subscribe(harness.Ctx(t, 2*time.Minute), func(ev events.Event) {
		st.Apply(ev)
		switch ev.EventHeader().Type {
		case events.TypeWorkerHeartbeat:
			heartbeats.Add(1)
		case events.TypeWorkerOffline:
			offline.Add(1)
		}
	}, events.Hostnames(nodename))
	require.NoError(t, err)
	defer sub.Stop()

	w, err := harness.StartWorker(harness.WorkerConfig{Name: name, Concurrency: 1, Pool: "solo"})
	require.NoError(t, err)
	defer w.Kill()
	require.Eventually(t, func() bool { return heartbeats.Load() >= 1 }, 20*time.Second, 10*time.Millisecond)
	require.True(t, st.Alive(nodename))
	wk, _ := st.Worker(nodename)
	expires := wk.HeartbeatExpires()

	w.Kill()
	killed := time.Now()
	require.Eventually(t, func() bool { return !st.Alive(nodename) }, 20*time.Second, 50*time.Millisecond,
		"a killed worker stops being alive")
	gone := time.Now()
	wk, _ = st.Worker(nodename)
	require.True(t, wk.Online, "no worker-offline came, so it was never marked offline")
	require.Zero(t, offline.Load())
	// Not before its last heartbeat expired.
	last := wk.Heartbeats[len(wk.Heartbeats)-1]
	require.False(t, gone.Before(wk.HeartbeatExpires()), "alive until %s, turned dead at %s", wk.HeartbeatExpires(), gone)
	require.False(t, wk.HeartbeatExpires().Before(expires))
	t.Logf("killed %s after its heartbeat at %s; not alive %s after the kill (expiry %s)",
		nodename, last.Format(time.RFC3339Nano), gone.Sub(killed).Round(time.Millisecond), wk.HeartbeatExpires().Format(time.RFC3339Nano))
}

func TestEventsOutOfOrderInjected(t *testing.T) {
	r := receiver(t, events.TaskEvents())
	p := newPublisher(t)
	st := events.NewState()
	id := uuid.NewString()
	fake := "fake-" + harness.RunID + "@nowhere"
	var applied atomic.Int32
	sub, err := r.Subscribe(harness.Ctx(t, time.Minute), func(ev events.Event) {
		st.Apply(ev)
		applied.Add(1)
	}, events.Hostnames(fake, "gen1@nowhere"))
	require.NoError(t, err)
	defer sub.Stop()
	base := float64(time.Now().Add(-time.Minute).UnixNano()) / 1e9
	ev := func(typ string, dt float64, clock int, extra map[string]any) map[string]any {
		m := map[string]any{"hostname": fake, "utcoffset": 0, "pid": 4242, "clock": clock, "uuid": id,
			"timestamp": base + dt, "type": typ}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	// Published newest first: succeeded (as a task.multi batch with an
	// empty one before it), started, received, then the client's task-sent.
	p.publishEvent(t, "task.multi", "application/json", []byte("[]"))
	p.publishJSON(t, "task.multi", []any{ev("task-succeeded", 3, 13, map[string]any{"result": "'done'", "runtime": 0.5})})
	p.publishJSON(t, "task.multi", []any{ev("task-started", 2, 12, nil)})
	p.publishJSON(t, "task.multi", []any{ev("task-received", 1, 11, map[string]any{"name": "tasks.injected",
		"args": "(1,)", "kwargs": "{}", "root_id": id, "parent_id": nil, "retries": 0, "eta": nil, "expires": nil})})
	sent := ev("task-sent", 0, 1, map[string]any{"name": "tasks.injected", "args": "(1,)", "kwargs": "{}",
		"root_id": id, "parent_id": nil, "retries": 0, "eta": nil, "expires": nil, "queue": "q", "exchange": "",
		"routing_key": "q"})
	sent["hostname"] = "gen1@nowhere"
	p.publishJSON(t, "task.sent", sent)
	// Then a RETRY that arrives late (ranks lowest, but always overwrites)
	// for a second task, followed by its earlier STARTED.
	id2 := uuid.NewString()
	ev2 := func(typ string, dt float64, extra map[string]any) map[string]any {
		m := ev(typ, dt, 20, extra)
		m["uuid"] = id2
		return m
	}
	p.publishJSON(t, "task.multi", []any{ev2("task-started", 2, nil), ev2("task-retried", 3, map[string]any{"exception": "RuntimeError('x')", "traceback": "tb"})})

	require.Eventually(t, func() bool { return applied.Load() == 6 }, 10*time.Second, 10*time.Millisecond)
	tk, ok := st.Task(id)
	require.True(t, ok)
	require.Equal(t, result.Success, tk.State, "late lower-ranked events do not move the state back")
	require.Equal(t, "tasks.injected", tk.Name, "late task-received still merges its fields")
	require.Equal(t, "(1,)", tk.Args)
	require.Equal(t, "'done'", tk.Result)
	require.Equal(t, 500*time.Millisecond, tk.Runtime)
	require.Equal(t, fake, tk.Worker)
	require.Equal(t, "gen1@nowhere", tk.Client)
	require.InDelta(t, base+3, float64(tk.Timestamp.UnixNano())/1e9, 1e-3)
	require.InDelta(t, base, float64(tk.Sent.UnixNano())/1e9, 1e-3)
	require.InDelta(t, base+1, float64(tk.Received.UnixNano())/1e9, 1e-3)
	require.InDelta(t, base+2, float64(tk.Started.UnixNano())/1e9, 1e-3)
	require.EqualValues(t, 13, tk.Clock)

	tk2, _ := st.Task(id2)
	require.Equal(t, result.Retry, tk2.State)
	require.Equal(t, "RuntimeError('x')", tk2.Exception)
}

// TestEventsTaskSentSeenByPython publishes events.TaskSentPublishing on a
// channel of the caller's own; TestEventsClientSendSeenByPython covers the
// task-sent events that Client.Send publishes.
func TestEventsTaskSentSeenByPython(t *testing.T) {
	p := newPublisher(t)
	id := uuid.NewString()
	script := `
import json, os
from tasks import app
want = os.environ["STALK_WANT_ID"]
out = {}
state = app.events.State()
def on_sent(ev):
    if ev.get("uuid") != want:
        return
    state.event(ev)
    task = state.tasks.get(want)
    ev.pop("local_received", None)
    out.update(event=ev, state=task.state, name=task.name, args=task.args, client=task.client)
    recv.should_stop = True
with app.connection_for_read() as conn:
    recv = app.events.Receiver(conn, handlers={"task-sent": on_sent})
    recv.capture(limit=100000, timeout=20, wakeup=False)
print(json.dumps(out))
`
	ctx := harness.Ctx(t, 60*time.Second)
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := harness.PythonScript(ctx, script, "STALK_WANT_ID="+id)
		done <- result{out, err}
	}()
	m := taskMsg{id: id, name: "tasks.add", argsrepr: "(2, 3)"}
	var sent events.TaskSent
	// Python needs a moment to declare its queue; publish until it has
	// seen one.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var res result
wait:
	for {
		select {
		case res = <-done:
			break wait
		case <-tick.C:
			sent = p.sendTaskSent(t, m)
		}
	}
	require.NoError(t, res.err)
	var got struct {
		Event  map[string]any `json:"event"`
		State  string         `json:"state"`
		Name   string         `json:"name"`
		Args   string         `json:"args"`
		Client string         `json:"client"`
	}
	require.NoError(t, json.Unmarshal(res.out, &got), string(res.out))
	require.Equal(t, "PENDING", got.State)
	require.Equal(t, "tasks.add", got.Name)
	require.Equal(t, "(2, 3)", got.Args)
	require.Equal(t, sent.Hostname, got.Client)
	e := got.Event
	require.Equal(t, "task-sent", e["type"])
	require.Equal(t, id, e["uuid"])
	require.Equal(t, id, e["root_id"])
	require.Nil(t, e["parent_id"])
	require.Equal(t, "{}", e["kwargs"])
	require.Equal(t, worker.Queue, e["queue"])
	require.Equal(t, worker.Queue, e["routing_key"])
	require.Equal(t, "", e["exchange"])
	require.EqualValues(t, 0, e["retries"])
	require.EqualValues(t, os.Getpid(), e["pid"])
	require.EqualValues(t, events.LocalUTCOffset(), e["utcoffset"])
	require.True(t, strings.HasPrefix(sent.Hostname, fmt.Sprintf("gen%d@", os.Getpid())))
	require.Equal(t, sent.Hostname, e["hostname"])
	require.InDelta(t, float64(time.Now().Unix()), e["timestamp"], 120)
}

// Tasks sent with Client.Send on a client with WithSentEvents(true) produce
// task-sent events that a Python celery.events Receiver decodes with the
// fields, types and message properties Celery 5.2.6's own client sends
// (PROTOCOL.md §8; fixtures/celery-5.2.6/capture.jsonl), and that its State
// turns into PENDING tasks with the Go process as client.
func TestEventsClientSendSeenByPython(t *testing.T) {
	q := harness.Name("events-sent")
	p := newPublisher(t)
	t.Cleanup(func() {
		// No worker consumes q: the tasks are only sent.
		p.mu.Lock()
		defer p.mu.Unlock()
		_, _ = p.ch.QueueDelete(q, false, false, false)
	})
	c := harness.Dial(t, "events", q, amqp.WithSentEvents(true))
	wait := startPySent(t, q, 2, 30*time.Second)

	ctx := harness.Ctx(t, 30*time.Second)
	before := time.Now()
	r1, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3), amqp.Queue(q))
	require.NoError(t, err)
	mid := time.Now()
	eta := mid.Add(90 * time.Second)
	expires := mid.Add(10 * time.Minute)
	parent, root := uuid.NewString(), uuid.NewString()
	r2, err := c.Send(ctx, "tasks.add", amqp.Args(2), amqp.Kwargs(map[string]any{"y": 3}), amqp.Queue(q),
		amqp.ETA(eta), amqp.ExpiresAt(expires), amqp.ParentID(parent), amqp.RootID(root))
	require.NoError(t, err)
	after := time.Now()

	got := wait()
	require.Len(t, got.Seen, 2, "task-sent events for %s", q)
	host := events.ClientHostname()
	require.True(t, strings.HasPrefix(host, fmt.Sprintf("gen%d@", os.Getpid())))
	require.Equal(t, got.UTCOffset, events.LocalUTCOffset(), "a Celery client on this host sends Python's utcoffset()")
	iso := func(at time.Time) string { return at.UTC().Format("2006-01-02T15:04:05.000000") + "+00:00" }
	type want struct {
		id, args, kwargs, rootID string
		parentID, eta, expires   any
		from, to                 time.Time
	}
	var clocks []float64
	for i, w := range []want{
		{id: r1.ID(), args: "(2, 3)", kwargs: "{}", rootID: r1.ID(), from: before, to: mid},
		{id: r2.ID(), args: "(2,)", kwargs: "{'y': 3}", rootID: root, parentID: parent,
			eta: iso(eta), expires: iso(expires), from: mid, to: after},
	} {
		s := got.Seen[i]
		// The body exactly as Celery's client publishes it: its keys in
		// Celery's order, with Python's types.
		require.Equal(t, []string{"hostname", "utcoffset", "pid", "clock", "uuid", "root_id", "parent_id",
			"name", "args", "kwargs", "retries", "eta", "expires", "queue", "exchange", "routing_key",
			"timestamp", "type"}, s.RawKeys, "task %d", i)
		nullable := func(v any) string {
			if v == nil {
				return "NoneType"
			}
			return "str"
		}
		require.Equal(t, map[string]string{"hostname": "str", "utcoffset": "int", "pid": "int", "clock": "int",
			"uuid": "str", "root_id": "str", "parent_id": nullable(w.parentID), "name": "str", "args": "str",
			"kwargs": "str", "retries": "int", "eta": nullable(w.eta), "expires": nullable(w.expires),
			"queue": "str", "exchange": "str", "routing_key": "str", "timestamp": "float", "type": "str"},
			s.RawTypes, "task %d", i)
		require.Equal(t, "celeryev", s.Props.Exchange)
		require.Equal(t, "task.sent", s.Props.RoutingKey)
		require.False(t, s.Props.Batch, "a client's task-sent is a single object")
		require.Equal(t, "application/json", s.Props.ContentType)
		require.Equal(t, "utf-8", s.Props.ContentEncoding)
		require.Equal(t, 1, s.Props.DeliveryMode)
		require.Equal(t, 0, s.Props.Priority)
		require.Equal(t, map[string]any{"hostname": host}, s.Props.Headers)

		// The event as the Receiver hands it to its handlers.
		e := s.Event
		require.Equal(t, "task-sent", e["type"])
		require.Equal(t, w.id, e["uuid"])
		require.Equal(t, "tasks.add", e["name"])
		require.Equal(t, w.args, e["args"])
		require.Equal(t, w.kwargs, e["kwargs"])
		require.EqualValues(t, 0, e["retries"])
		require.Equal(t, w.eta, e["eta"])
		require.Equal(t, w.expires, e["expires"])
		require.Equal(t, q, e["queue"])
		require.Equal(t, "", e["exchange"])
		require.Equal(t, q, e["routing_key"])
		require.Equal(t, w.rootID, e["root_id"])
		require.Equal(t, w.parentID, e["parent_id"])
		require.Equal(t, host, e["hostname"])
		require.EqualValues(t, os.Getpid(), e["pid"])
		require.EqualValues(t, got.UTCOffset, e["utcoffset"])
		// The client's own Lamport clock is in the body; the Receiver
		// replaces it, as Celery does for task-sent, with its own clock - 1.
		clock := s.Raw["clock"].(float64)
		require.GreaterOrEqual(t, clock, 1.0)
		clocks = append(clocks, clock)
		// Published during Send; the Receiver's utcoffset adjustment is a
		// no-op between two processes on one host.
		ts := s.Raw["timestamp"].(float64)
		require.GreaterOrEqual(t, ts, float64(w.from.UnixNano())/1e9-1e-6)
		require.LessOrEqual(t, ts, float64(w.to.UnixNano())/1e9+1e-6)
		require.InDelta(t, ts, e["timestamp"], 1e-6)
		require.GreaterOrEqual(t, s.LocalReceived, ts-0.5)

		// Python parses eta and expires as aware datetimes.
		if w.eta == nil {
			require.Nil(t, s.ETA)
			require.Nil(t, s.Expires)
		} else {
			require.InDelta(t, float64(eta.UnixMicro())/1e6, s.ETA.TS, 1e-6)
			require.InDelta(t, float64(expires.UnixMicro())/1e6, s.Expires.TS, 1e-6)
			require.Equal(t, 0.0, *s.ETA.Offset)
			require.Equal(t, 0.0, *s.Expires.Offset)
		}

		// celery.events.State: a PENDING task whose client is this process.
		tk := s.Task
		require.Equal(t, "PENDING", tk["state"])
		require.Equal(t, host, tk["client"])
		require.Nil(t, tk["worker"])
		require.Equal(t, "tasks.add", tk["name"])
		require.Equal(t, w.args, tk["args"])
		require.Equal(t, w.kwargs, tk["kwargs"])
		require.EqualValues(t, 0, tk["retries"])
		require.Equal(t, w.eta, tk["eta"])
		require.Equal(t, w.expires, tk["expires"])
		require.Equal(t, "", tk["exchange"])
		require.Equal(t, q, tk["routing_key"])
		require.Equal(t, w.rootID, tk["root_id"])
		require.Equal(t, w.parentID, tk["parent_id"])
		require.InDelta(t, ts, tk["sent"], 1e-6)
		require.InDelta(t, ts, tk["timestamp"], 1e-6)
	}
	require.Greater(t, clocks[1], clocks[0], "the client's clock goes forward")
}

func TestEventsMalformedSkipped(t *testing.T) {
	key := "task.stalk" + harness.RunID + "malformed"
	r := receiver(t, events.Bind(key), events.WithoutWake())
	p := newPublisher(t)
	var got []string
	var mu sync.Mutex
	sub, err := r.Subscribe(harness.Ctx(t, time.Minute), func(ev events.Event) {
		mu.Lock()
		got = append(got, ev.(events.TaskEvent).TaskID())
		mu.Unlock()
	})
	require.NoError(t, err)
	good := func(id string) []byte {
		return []byte(fmt.Sprintf(`{"type":"task-started","uuid":%q,"hostname":"x@y","clock":1,"timestamp":1795739176.0}`, id))
	}
	p.publishEvent(t, key, "application/json", good("before"))
	p.publishEvent(t, key, "application/json", []byte("{not json"))                         // 1
	p.publishEvent(t, key, "application/json", []byte(`{"uuid":"no-type"}`))                // 1
	p.publishEvent(t, key, "application/json", []byte(`[1, {"type":"task-started"}, "x"]`)) // 3
	p.publishEvent(t, key, "application/x-python-serialize", []byte("\x80\x04\x95."))       // 1, refused
	p.publishEvent(t, key, "application/x-yaml", []byte("type: task-started"))              // 1, refused
	p.publishEvent(t, key, "application/json", append([]byte(`[`), append(good("inside"), ']')...))
	p.publishEvent(t, key, "application/json", good("after"))
	// Received counts a message before its events reach the subscription:
	// wait until the subscription has taken all three good ones, then drain.
	require.Eventually(t, func() bool { return r.Stats().Received == 8 && sub.Stats().Matched == 3 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, sub.Drain(harness.Ctx(t, 10*time.Second)))
	st := r.Stats()
	require.EqualValues(t, 7, st.Malformed)
	require.EqualValues(t, 2, st.Refused)
	require.EqualValues(t, 3, st.Decoded)
	require.Equal(t, []string{"before", "inside", "after"}, got)
}

func TestEventsSurvivesReconnect(t *testing.T) {
	key := "task.stalk" + harness.RunID + "reconnect"
	name := harness.Name("events-reconnect")
	r, err := events.Dial(harness.Ctx(t, 20*time.Second), harness.BrokerURL(), events.ConnectionName(name), events.Bind(key), events.WithoutWake())
	require.NoError(t, err)
	defer r.Close()
	var n atomic.Int32
	_, err = r.Subscribe(harness.Ctx(t, time.Minute), func(events.Event) { n.Add(1) })
	require.NoError(t, err)
	p := newPublisher(t)
	body := []byte(`{"type":"worker-heartbeat","hostname":"x@y","freq":2}`)
	p.publishEvent(t, key, "application/json", body)
	require.Eventually(t, func() bool { return n.Load() == 1 }, 10*time.Second, 10*time.Millisecond)
	q1 := r.Queue()

	harness.CloseConnection(t, name)
	require.Eventually(t, func() bool { return r.Stats().Consumes == 2 }, 20*time.Second, 10*time.Millisecond)
	require.NotEqual(t, q1, r.Queue(), "an exclusive queue is declared anew")
	p.publishEvent(t, key, "application/json", body)
	require.Eventually(t, func() bool { return n.Load() == 2 }, 10*time.Second, 10*time.Millisecond)

	require.NoError(t, r.Close())
}
