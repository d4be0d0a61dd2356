package events

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/result"
)

var t0 = time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)

func hdr(typ, host string, sec float64) Header {
	ts := float64(t0.Unix()) + sec
	return Header{Type: typ, Hostname: host, Timestamp: ts, Time: epochTime(ts), Clock: int64(sec * 10)}
}

func received(id string, sec float64) *TaskReceived {
	return &TaskReceived{Header: hdr(TypeTaskReceived, "w@h", sec), UUID: id, Name: "tasks.add", Args: "(2, 3)", Kwargs: "{}", RootID: id}
}
func started(id string, sec float64) *TaskStarted {
	return &TaskStarted{Header: hdr(TypeTaskStarted, "w@h", sec), UUID: id}
}
func succeeded(id string, sec float64) *TaskSucceeded {
	return &TaskSucceeded{Header: hdr(TypeTaskSucceeded, "w@h", sec), UUID: id, Result: "5", Runtime: time.Millisecond}
}
func sent(id string, sec float64) *TaskSent {
	return &TaskSent{Header: hdr(TypeTaskSent, "gen1@h", sec), UUID: id, Name: "tasks.add", Args: "(2, 3)", Kwargs: "{}", Queue: "q"}
}
func retried(id string, sec float64) *TaskRetried {
	return &TaskRetried{Header: hdr(TypeTaskRetried, "w@h", sec), UUID: id, Exception: "RuntimeError('x')", Traceback: "tb"}
}

func TestStateInOrder(t *testing.T) {
	st := NewState()
	var seen []result.State
	st.OnTask(func(tk Task) { seen = append(seen, tk.State) })
	for _, ev := range []Event{sent("a", 0), received("a", 1), started("a", 2), succeeded("a", 3)} {
		st.Apply(ev)
	}
	require.Equal(t, []result.State{result.Pending, result.Received, result.Started, result.Success}, seen)
	tk, ok := st.Task("a")
	require.True(t, ok)
	require.Equal(t, result.Success, tk.State)
	require.Equal(t, "tasks.add", tk.Name)
	require.Equal(t, "(2, 3)", tk.Args)
	require.Equal(t, "w@h", tk.Worker)
	require.Equal(t, "gen1@h", tk.Client)
	require.Equal(t, "5", tk.Result)
	require.Equal(t, t0.Add(3*time.Second), tk.Timestamp)
	require.Equal(t, t0, tk.Sent)
	require.Equal(t, t0.Add(time.Second), tk.Received)
	require.Equal(t, t0.Add(2*time.Second), tk.Started)
	require.Equal(t, t0.Add(3*time.Second), tk.Succeeded)
	require.True(t, tk.Ready())
}

func TestStateOutOfOrder(t *testing.T) {
	st := NewState()
	// The reverse order: every late event ranks lower and only adds fields.
	for _, ev := range []Event{succeeded("a", 3), started("a", 2), received("a", 1), sent("a", 0)} {
		st.Apply(ev)
	}
	tk, _ := st.Task("a")
	require.Equal(t, result.Success, tk.State)
	require.Equal(t, t0.Add(3*time.Second), tk.Timestamp, "state timestamp stays the SUCCESS one")
	require.Equal(t, "tasks.add", tk.Name, "late RECEIVED merges the identity fields")
	require.Equal(t, "5", tk.Result)
	require.Equal(t, t0, tk.Sent)
	require.Equal(t, t0.Add(2*time.Second), tk.Started)
	require.EqualValues(t, 30, tk.Clock)

	// FAILURE beats STARTED; a late STARTED does not win back.
	st.Apply(&TaskFailed{Header: hdr(TypeTaskFailed, "w@h", 5), UUID: "b", Exception: "ValueError('x')", Traceback: "tb"})
	st.Apply(started("b", 4))
	tb, _ := st.Task("b")
	require.Equal(t, result.Failure, tb.State)
	require.Equal(t, "ValueError('x')", tb.Exception)

	// A custom state ranks between FAILURE and REVOKED.
	st.Apply(&Unknown{Header: hdr("task-progress", "w@h", 1), UUID: "c", Fields: map[string]any{"current": 1, "name": "tasks.progress"}})
	st.Apply(started("c", 0.5))
	tc, _ := st.Task("c")
	require.Equal(t, result.State("PROGRESS"), tc.State)
	require.Equal(t, "tasks.progress", tc.Name)
	require.Equal(t, 1, tc.Extra["current"])
	st.Apply(&TaskRevoked{Header: hdr(TypeTaskRevoked, "w@h", 2), UUID: "c", Expired: true})
	tc, _ = st.Task("c")
	require.Equal(t, result.State("PROGRESS"), tc.State, "REVOKED ranks below custom states")
	require.True(t, tc.Expired)
	st.Apply(succeeded("c", 3))
	tc, _ = st.Task("c")
	require.Equal(t, result.Success, tc.State)
}

func TestStateRetryOverwrites(t *testing.T) {
	st := NewState()
	st.Apply(started("a", 1))
	st.Apply(retried("a", 2))
	tk, _ := st.Task("a")
	require.Equal(t, result.Retry, tk.State, "RETRY ranks below STARTED but always overwrites")
	require.Equal(t, "RuntimeError('x')", tk.Exception)
	// Anything overwrites RETRY, even a lower RECEIVED (the retry's own).
	r := received("a", 3)
	r.Retries = 1
	st.Apply(r)
	tk, _ = st.Task("a")
	require.Equal(t, result.Received, tk.State)
	require.Equal(t, 1, tk.Retries)
	require.Equal(t, t0.Add(2*time.Second), tk.Retried)
}

func TestStatePrecedence(t *testing.T) {
	order := []result.State{result.Pending, result.Retry, result.Rejected, result.Received, result.Started, result.Revoked, "PROGRESS", result.Failure, result.Success}
	for i := range order {
		for j := range order {
			require.Equal(t, i < j, order[i].Precedes(order[j]), "%s < %s", order[i], order[j])
		}
	}
	require.Equal(t, result.State("CANCELLED"), StateFor("task-cancelled"))
	require.Equal(t, result.State(""), StateFor("worker-online"))
}

func TestStateEvictsFinishedFirst(t *testing.T) {
	st := NewState(MaxTasks(3))
	st.Apply(started("run1", 0))
	st.Apply(succeeded("done1", 1))
	st.Apply(started("run2", 2))
	st.Apply(started("run3", 3)) // 4 tasks: done1 goes, though run1 is older
	_, ok := st.Task("done1")
	require.False(t, ok)
	require.Equal(t, 3, st.Len())
	st.Apply(started("run4", 4)) // nothing finished: the oldest, run1, goes
	_, ok = st.Task("run1")
	require.False(t, ok)
	for _, id := range []string{"run2", "run3", "run4"} {
		_, ok := st.Task(id)
		require.True(t, ok, id)
	}
	require.EqualValues(t, 2, st.Evicted())

	big := NewState(MaxTasks(100))
	for i := range 10000 {
		big.Apply(succeeded(fmt.Sprint(i), float64(i)))
	}
	require.Equal(t, 100, big.Len())
	_, ok = big.Task("9999")
	require.True(t, ok)
}

func TestStateChildren(t *testing.T) {
	st := NewState()
	c := received("child", 2)
	c.ParentID = "parent"
	st.Apply(c)
	p, ok := st.Task("parent")
	require.True(t, ok, "a parent not yet seen gets a placeholder")
	require.Equal(t, result.Pending, p.State)
	require.Equal(t, []string{"child"}, p.Children)
	st.Apply(received("parent", 1))
	p, _ = st.Task("parent")
	require.Equal(t, []string{"child"}, p.Children)
	require.Len(t, st.Tasks(TasksByState(result.Received)), 2)
}

func heartbeat(host string, freq float64) *WorkerHeartbeat {
	return &WorkerHeartbeat{Header: Header{Type: TypeWorkerHeartbeat, Hostname: host, PID: 42}, WorkerInfo: WorkerInfo{Freq: freq, Active: 1}}
}

func TestStateHeartbeatTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := NewState() // the default clock is time.Now, fake in the bubble
		var last Worker
		st.OnWorker(func(w Worker) { last = w })
		st.Apply(&WorkerOnline{Header: Header{Type: TypeWorkerOnline, Hostname: "w@h", PID: 42}, WorkerInfo: WorkerInfo{Freq: 2}})
		require.True(t, st.Alive("w@h"))
		require.True(t, last.Alive)
		require.True(t, last.Online)
		time.Sleep(3 * time.Second)
		require.True(t, st.Alive("w@h"), "alive until last heartbeat + 2·freq")
		time.Sleep(999 * time.Millisecond)
		require.True(t, st.Alive("w@h"))
		time.Sleep(time.Millisecond)
		require.False(t, st.Alive("w@h"), "4 s after the last heartbeat, freq 2")

		st.Apply(heartbeat("w@h", 2))
		require.True(t, st.Alive("w@h"))
		// Task events from the worker count as heartbeats too.
		time.Sleep(3 * time.Second)
		st.Apply(&TaskStarted{Header: Header{Type: TypeTaskStarted, Hostname: "w@h"}, UUID: "x"})
		time.Sleep(3 * time.Second)
		require.True(t, st.Alive("w@h"))
		w, _ := st.Worker("w@h")
		require.Len(t, w.Heartbeats, 3)
		require.Equal(t, time.Now().Add(time.Second), w.HeartbeatExpires())

		for range 10 {
			st.Apply(heartbeat("w@h", 2))
			time.Sleep(time.Second)
		}
		w, _ = st.Worker("w@h")
		require.Len(t, w.Heartbeats, maxHeartbeats)

		st.Apply(&WorkerOffline{Header: Header{Type: TypeWorkerOffline, Hostname: "w@h"}, WorkerInfo: WorkerInfo{Freq: 2}})
		require.False(t, st.Alive("w@h"), "offline clears the heartbeats")
		w, _ = st.Worker("w@h")
		require.False(t, w.Online)
		require.Empty(t, w.Heartbeats)
		require.False(t, st.Alive("unknown@h"))
	})
}

func TestStateInjectedClock(t *testing.T) {
	now := t0
	st := NewState(WithClock(func() time.Time { return now }))
	hb := heartbeat("w@h", 5)
	st.Apply(hb)
	now = now.Add(9 * time.Second)
	require.True(t, st.Alive("w@h"))
	now = now.Add(time.Second)
	require.False(t, st.Alive("w@h"))
	ws := st.Workers()
	require.Len(t, ws, 1)
	require.False(t, ws[0].Alive)
	require.Equal(t, 42, ws[0].PID)
}
