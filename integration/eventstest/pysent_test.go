package eventstest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/integration/harness"
)

// pySentScript runs a celery.events Receiver (binding "#" on celeryev, as
// Celery's own monitors do) until it has seen $STALK_WANT_N task-sent
// events for tasks routed to the queue $STALK_WANT_QUEUE, then prints what
// Python made of them as JSON. It creates $STALK_READY_FILE once its
// consumer is ready, so that the test publishes only then.
const pySentScript = `
import json, os, time
from datetime import datetime
from celery.utils.time import utcoffset
from tasks import app

want_queue = os.environ["STALK_WANT_QUEUE"]
want_n = int(os.environ["STALK_WANT_N"])
deadline = time.monotonic() + float(os.environ["STALK_TIMEOUT"])
state = app.events.State()
raw, props, seen = {}, {}, []

def iso(s):
    if s is None:
        return None
    d = datetime.fromisoformat(s)
    off = d.utcoffset()
    return {"ts": d.timestamp(), "offset": None if off is None else off.total_seconds()}

def ours(ev):
    return isinstance(ev, dict) and ev.get("type") == "task-sent" and ev.get("queue") == want_queue

def on_event(ev):
    if ours(ev):
        uid = ev["uuid"]
        state.event(dict(ev))
        task = state.tasks.get(uid)
        ev = dict(ev)
        local_received = ev.pop("local_received")
        seen.append({
            "raw": raw.get(uid),
            "raw_keys": list(raw[uid].keys()) if uid in raw else None,
            "raw_types": {k: type(v).__name__ for k, v in raw.get(uid, {}).items()},
            "event": ev,
            "local_received": local_received,
            "props": props.get(uid),
            "task": {
                "state": task.state, "client": task.client, "worker": task.worker and task.worker.hostname,
                "name": task.name, "args": task.args, "kwargs": task.kwargs, "retries": task.retries,
                "eta": task.eta, "expires": task.expires, "exchange": task.exchange,
                "routing_key": task.routing_key, "root_id": task.root_id, "parent_id": task.parent_id,
                "sent": task.sent, "timestamp": task.timestamp,
            },
            "eta": iso(task.eta),
            "expires": iso(task.expires),
        })
        if len(seen) >= want_n:
            recv.should_stop = True
    if time.monotonic() > deadline:
        recv.should_stop = True

with app.connection_for_read() as conn:
    recv = app.events.Receiver(conn, handlers={"*": on_event})

    # The body as kombu decoded it, before event_from_message adjusts clock
    # and timestamp in place, and the message's properties.
    orig_receive = recv._receive
    def receive(body, message):
        for ev in body if isinstance(body, list) else [body]:
            if ours(ev):
                raw[ev["uuid"]] = dict(ev)
                props[ev["uuid"]] = {
                    "exchange": message.delivery_info.get("exchange"),
                    "routing_key": message.delivery_info.get("routing_key"),
                    "content_type": message.content_type,
                    "content_encoding": message.content_encoding,
                    "delivery_mode": message.properties.get("delivery_mode"),
                    "priority": message.properties.get("priority"),
                    "headers": message.headers,
                    "batch": isinstance(body, list),
                }
        return orig_receive(body, message)
    recv._receive = receive

    orig_ready = recv.on_consume_ready
    def on_ready(*args, **kwargs):
        orig_ready(*args, **kwargs)
        open(os.environ["STALK_READY_FILE"], "w").close()
    recv.on_consume_ready = on_ready

    recv.capture(limit=None, timeout=float(os.environ["STALK_TIMEOUT"]), wakeup=False)

print(json.dumps({"seen": seen, "utcoffset": utcoffset()}))
`

// pySent is what pySentScript printed.
type pySent struct {
	Seen []struct {
		Raw           map[string]any    `json:"raw"`
		RawKeys       []string          `json:"raw_keys"`
		RawTypes      map[string]string `json:"raw_types"`
		Event         map[string]any    `json:"event"`
		LocalReceived float64           `json:"local_received"`
		Props         struct {
			Exchange        string         `json:"exchange"`
			RoutingKey      string         `json:"routing_key"`
			ContentType     string         `json:"content_type"`
			ContentEncoding string         `json:"content_encoding"`
			DeliveryMode    int            `json:"delivery_mode"`
			Priority        int            `json:"priority"`
			Headers         map[string]any `json:"headers"`
			Batch           bool           `json:"batch"`
		} `json:"props"`
		Task    map[string]any `json:"task"`
		ETA     *pyISO         `json:"eta"`
		Expires *pyISO         `json:"expires"`
	} `json:"seen"`
	// UTCOffset is celery.utils.time.utcoffset() in the Python process:
	// what a Celery client on this host puts in its events.
	UTCOffset int `json:"utcoffset"`
}

// pyISO is an ISO-8601 string as Python's datetime.fromisoformat read it.
type pyISO struct {
	TS     float64  `json:"ts"`
	Offset *float64 `json:"offset"` // seconds east of UTC; nil when naive
}

// startPySent starts pySentScript for n task-sent events on queue and
// returns once its Receiver consumes; wait returns its result.
func startPySent(t *testing.T, queue string, n int, within time.Duration) (wait func() pySent) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	ctx := harness.Ctx(t, within+30*time.Second)
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := harness.PythonScript(ctx, pySentScript,
			"STALK_WANT_QUEUE="+queue, "STALK_WANT_N="+strconv.Itoa(n),
			"STALK_READY_FILE="+ready, "STALK_TIMEOUT="+strconv.Itoa(int(within.Seconds())))
		done <- result{out, err}
	}()
	collect := func(res result) pySent {
		t.Helper()
		require.NoError(t, res.err)
		var got pySent
		require.NoError(t, json.Unmarshal(res.out, &got), string(res.out))
		return got
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case res := <-done:
			collect(res)
			t.Fatalf("the Python receiver exited before it was ready: %s", res.out)
		case <-ctx.Done():
			t.Fatalf("the Python receiver was not ready: %v", context.Cause(ctx))
		case <-tick.C:
			if _, err := os.Stat(ready); err == nil {
				return func() pySent { t.Helper(); return collect(<-done) }
			} else if !errors.Is(err, os.ErrNotExist) {
				require.NoError(t, err)
			}
		}
	}
}
