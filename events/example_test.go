package events_test

import (
	"fmt"

	"github.com/stalk-dev/stalk/events"
)

// Celery batches task events into task.multi arrays; Decode reads a body
// of either form, and a State merges the events as Flower does. The bodies
// are as a Celery 5.2.6 worker sent them.
func ExampleDecode() {
	bodies := []string{
		`[{"hostname": "w1@vm", "utcoffset": 0, "pid": 9712, "clock": 54, "uuid": "82df4be8-f1d9-4d41-8a4a-46a5c50adf8f", "name": "tasks.add", "args": "(1, 1)", "kwargs": "{}", "root_id": "82df4be8-f1d9-4d41-8a4a-46a5c50adf8f", "parent_id": null, "retries": 0, "eta": null, "expires": null, "timestamp": 1795738700.5329, "type": "task-received"}, {"hostname": "w1@vm", "utcoffset": 0, "pid": 9716, "clock": 55, "uuid": "82df4be8-f1d9-4d41-8a4a-46a5c50adf8f", "timestamp": 1795738700.5370, "type": "task-started"}]`,
		`[{"hostname": "w1@vm", "utcoffset": 0, "pid": 9712, "clock": 56, "uuid": "82df4be8-f1d9-4d41-8a4a-46a5c50adf8f", "result": "2", "runtime": 0.00057, "timestamp": 1795738700.5388756, "type": "task-succeeded"}]`,
	}
	st := events.NewState()
	for _, b := range bodies {
		evs, err := events.Decode([]byte(b))
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, ev := range evs {
			fmt.Printf("%T %s\n", ev, ev.EventHeader().Type)
			st.Apply(ev)
		}
	}
	t, _ := st.Task("82df4be8-f1d9-4d41-8a4a-46a5c50adf8f")
	fmt.Println(t.Name, t.State, t.Worker, t.Result)
	// Output:
	// *events.TaskReceived task-received
	// *events.TaskStarted task-started
	// *events.TaskSucceeded task-succeeded
	// tasks.add SUCCESS w1@vm 2
}

// Bodies that are not events are counted and skipped; the good events
// around them still come back.
func ExampleMalformed() {
	evs, err := events.Decode([]byte(`[{"type": "task-started", "uuid": "a", "hostname": "w@h", "timestamp": 1}, 42, {"hostname": "w@h"}]`))
	fmt.Println(len(evs), events.Malformed(err))
	// Output:
	// 1 2
}
