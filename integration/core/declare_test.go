package core

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
)

// The broker's view of a queue, an exchange and a binding, as
// `rabbitmqctl --formatter json` prints them.
type (
	brokerQueue struct {
		Name       string          `json:"name"`
		Type       string          `json:"type"`
		Durable    bool            `json:"durable"`
		AutoDelete bool            `json:"auto_delete"`
		Exclusive  flexBool        `json:"exclusive"`
		Arguments  json.RawMessage `json:"arguments"`
		Messages   int             `json:"messages"`
	}
	brokerExchange struct {
		Name       string          `json:"name"`
		Type       string          `json:"type"`
		Durable    bool            `json:"durable"`
		AutoDelete bool            `json:"auto_delete"`
		Internal   bool            `json:"internal"`
		Arguments  json.RawMessage `json:"arguments"`
	}
	brokerBinding struct {
		Source      string `json:"source_name"`
		Destination string `json:"destination_name"`
		RoutingKey  string `json:"routing_key"`
	}
)

// flexBool reads a bool that rabbitmqctl 3.10 prints as "" for quorum
// queues (their exclusive column), as false.
type flexBool bool

func (b *flexBool) UnmarshalJSON(data []byte) error {
	switch string(data) {
	case "true":
		*b = true
	case "false", `""`:
		*b = false
	default:
		return fmt.Errorf("not a bool: %s", data)
	}
	return nil
}

// ctlJSON runs `rabbitmqctl -q <cmd> --formatter json <columns…>` and
// decodes its stdout into out.
func ctlJSON(t *testing.T, out any, cmd string, columns ...string) {
	t.Helper()
	args := append([]string{"-q", cmd, "--formatter", "json"}, columns...)
	c := exec.Command("rabbitmqctl", args...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	b, err := c.Output()
	require.NoError(t, err, "rabbitmqctl %s: %s", strings.Join(args, " "), stderr.String())
	require.NoError(t, json.Unmarshal(b, out), "rabbitmqctl %s printed %q", cmd, b)
}

// topology is the broker's view of the queues in names, their exchanges
// (named like them, as Celery's autoexchange does) and every binding whose
// destination is one of them.
type topology struct {
	queues    map[string]brokerQueue
	exchanges map[string]brokerExchange
	bindings  map[string][]brokerBinding // by destination, sorted
}

func readTopology(t *testing.T, names ...string) topology {
	t.Helper()
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	top := topology{
		queues:    map[string]brokerQueue{},
		exchanges: map[string]brokerExchange{},
		bindings:  map[string][]brokerBinding{},
	}
	var qs []brokerQueue
	ctlJSON(t, &qs, "list_queues", "name", "type", "durable", "auto_delete", "exclusive", "arguments", "messages")
	for _, q := range qs {
		if want[q.Name] {
			top.queues[q.Name] = q
		}
	}
	var xs []brokerExchange
	ctlJSON(t, &xs, "list_exchanges", "name", "type", "durable", "auto_delete", "internal", "arguments")
	for _, x := range xs {
		if want[x.Name] {
			top.exchanges[x.Name] = x
		}
	}
	var bs []brokerBinding
	ctlJSON(t, &bs, "list_bindings", "source_name", "destination_name", "routing_key")
	for _, b := range bs {
		if want[b.Destination] {
			top.bindings[b.Destination] = append(top.bindings[b.Destination], b)
		}
	}
	for _, l := range top.bindings {
		sort.Slice(l, func(i, j int) bool { return l[i].Source < l[j].Source })
	}
	return top
}

// waitMessages waits until every queue in want holds exactly that many
// messages, and returns the last topology read.
func waitMessages(t *testing.T, want map[string]int) topology {
	t.Helper()
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		top := readTopology(t, names...)
		ok := true
		for n, m := range want {
			if top.queues[n].Messages != m {
				ok = false
			}
		}
		if ok || time.Now().After(deadline) {
			return top
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// celerySendScript sends tasks.add to $STALK_DECLARE_QUEUE with Celery's own
// client (which declares the queue's exchange, queue and binding from
// app.amqp.queues, the same kombu Queue a worker consuming it declares), and
// prints the task id and kombu's flags for that queue.
const celerySendScript = `
import json, os
from tasks import app
name = os.environ["STALK_DECLARE_QUEUE"]
r = app.send_task("tasks.add", args=(2, 3), queue=name, ignore_result=True)
q = app.amqp.queues[name]
x = q.exchange
print(json.dumps({
    "id": r.id,
    "queue": {"name": q.name, "durable": q.durable, "auto_delete": q.auto_delete,
              "exclusive": q.exclusive, "arguments": q.queue_arguments,
              "routing_key": q.routing_key, "exchange": x.name},
    "exchange": {"name": x.name, "type": x.type, "durable": x.durable,
                 "auto_delete": x.auto_delete, "arguments": x.arguments},
}))
app.close()
`

type kombuView struct {
	ID    string `json:"id"`
	Queue struct {
		Name       string         `json:"name"`
		Durable    bool           `json:"durable"`
		AutoDelete bool           `json:"auto_delete"`
		Exclusive  bool           `json:"exclusive"`
		Arguments  map[string]any `json:"arguments"`
		RoutingKey string         `json:"routing_key"`
		Exchange   string         `json:"exchange"`
	} `json:"queue"`
	Exchange struct {
		Name       string         `json:"name"`
		Type       string         `json:"type"`
		Durable    bool           `json:"durable"`
		AutoDelete bool           `json:"auto_delete"`
		Arguments  map[string]any `json:"arguments"`
	} `json:"exchange"`
}

// Sending to a queue nobody else declared makes stalk declare exactly the
// topology Celery 5.2 declares for it (PROTOCOL.md §1; kombu Queue/Exchange
// defaults; celery/app/amqp.py Queues.new_missing: Queue(name,
// Exchange(name), name)): a durable direct exchange named after the queue,
// a durable, non-exclusive, non-auto-delete classic queue without
// arguments, and a binding exchange→queue with the queue name as key. The
// test checks the broker's own view against those flags and against a
// queue that Celery itself declared in the same run, proves the task landed
// in the queue, and shows that stalk redeclaring a Celery-declared queue
// succeeds without a warning.
func TestSendDeclaresCeleryTopology(t *testing.T) {
	ctx := harness.Ctx(t, 60*time.Second)
	suffix := uuid.NewString()[:8] // -count=N reruns get fresh names
	qGo := harness.Name("declare", "go", suffix)
	qPy := harness.Name("declare", "py", suffix)

	admin, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	t.Cleanup(func() {
		defer admin.Close()
		ch, err := admin.Channel()
		if err != nil {
			t.Errorf("cleanup: open channel: %v", err)
			return
		}
		defer ch.Close()
		for _, n := range []string{qGo, qPy} {
			if _, err := ch.QueueDelete(n, false, false, false); err != nil {
				t.Errorf("cleanup: delete queue %s: %v", n, err)
			}
			if err := ch.ExchangeDelete(n, false, false); err != nil {
				t.Errorf("cleanup: delete exchange %s: %v", n, err)
			}
		}
		top := readTopology(t, qGo, qPy)
		assert.Empty(t, top.queues, "test queues deleted")
		assert.Empty(t, top.exchanges, "test exchanges deleted")
	})

	// Nothing by these names exists yet: only the senders below declare them.
	before := readTopology(t, qGo, qPy)
	require.Empty(t, before.queues)
	require.Empty(t, before.exchanges)
	require.Empty(t, before.bindings)

	// Celery's client declares qPy and publishes a task to it.
	out, err := harness.PythonScript(ctx, celerySendScript, "STALK_DECLARE_QUEUE="+qPy)
	require.NoError(t, err)
	var kv kombuView
	require.NoError(t, json.Unmarshal(out, &kv), "python printed %q", out)
	// kombu's own view of the queue Celery 5.2.6 creates for a plain queue name.
	assert.Equal(t, qPy, kv.Queue.Name)
	assert.True(t, kv.Queue.Durable, "kombu queue durable")
	assert.False(t, kv.Queue.AutoDelete, "kombu queue auto_delete")
	assert.False(t, kv.Queue.Exclusive, "kombu queue exclusive")
	assert.Empty(t, kv.Queue.Arguments, "kombu queue arguments")
	assert.Equal(t, qPy, kv.Queue.RoutingKey)
	assert.Equal(t, qPy, kv.Queue.Exchange)
	assert.Equal(t, qPy, kv.Exchange.Name)
	assert.Equal(t, "direct", kv.Exchange.Type)
	assert.True(t, kv.Exchange.Durable, "kombu exchange durable")
	assert.False(t, kv.Exchange.AutoDelete, "kombu exchange auto_delete")
	assert.Empty(t, kv.Exchange.Arguments, "kombu exchange arguments")

	// stalk declares qGo and publishes a task to it.
	var logs harness.SyncBuffer
	logger := amqp.WithLogger(zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), &logs)).Level(zerolog.WarnLevel))
	c1 := dial(t, logger)
	r1, err := c1.Send(ctx, "tasks.add", amqp.Args(2, 3), amqp.Queue(qGo))
	require.NoError(t, err)

	msgs := map[string]int{qGo: 1, qPy: 1}
	top := waitMessages(t, msgs)
	wantQueue := func(name string, msgs int) brokerQueue {
		return brokerQueue{Name: name, Type: "classic", Durable: true, AutoDelete: false,
			Exclusive: false, Arguments: json.RawMessage(`[]`), Messages: msgs}
	}
	wantExchange := func(name string) brokerExchange {
		return brokerExchange{Name: name, Type: "direct", Durable: true, AutoDelete: false,
			Internal: false, Arguments: json.RawMessage(`[]`)}
	}
	wantBindings := func(name string) []brokerBinding {
		return []brokerBinding{
			{Source: "", Destination: name, RoutingKey: name}, // the default exchange's implicit binding
			{Source: name, Destination: name, RoutingKey: name},
		}
	}
	checkTopology := func(top topology, msgs map[string]int) {
		t.Helper()
		for _, n := range []string{qGo, qPy} {
			require.Contains(t, top.queues, n)
			require.Contains(t, top.exchanges, n)
			assert.Equal(t, wantQueue(n, msgs[n]), top.queues[n], "queue %s", n)
			assert.Equal(t, wantExchange(n), top.exchanges[n], "exchange %s", n)
			assert.Equal(t, wantBindings(n), top.bindings[n], "bindings to %s", n)
		}
		// Cross-check: stalk's queue and exchange equal Celery's own, name
		// and message count aside.
		g, p := top.queues[qGo], top.queues[qPy]
		g.Name, p.Name, g.Messages, p.Messages = "", "", 0, 0
		assert.Equal(t, p, g, "stalk's queue flags equal Celery's")
		ge, pe := top.exchanges[qGo], top.exchanges[qPy]
		ge.Name, pe.Name = "", ""
		assert.Equal(t, pe, ge, "stalk's exchange flags equal Celery's")
	}
	checkTopology(top, msgs)

	// A fresh client (nothing cached) redeclares both the Celery-declared
	// queue and its own: no error, no "exists with other arguments" warning,
	// nothing changed.
	c2 := dial(t, logger)
	r2, err := c2.Send(ctx, "tasks.add", amqp.Args(4, 5), amqp.Queue(qPy))
	require.NoError(t, err, "stalk send to the queue Celery declared")
	r3, err := c2.Send(ctx, "tasks.add", amqp.Args(6, 7), amqp.Queue(qGo))
	require.NoError(t, err, "stalk send to the queue stalk declared")
	// And a second send on the first client (declaration cached).
	r4, err := c1.Send(ctx, "tasks.add", amqp.Args(8, 9), amqp.Queue(qGo))
	require.NoError(t, err)
	msgs = map[string]int{qGo: 3, qPy: 2}
	checkTopology(waitMessages(t, msgs), msgs)
	assert.Empty(t, logs.String(), "no warnings from stalk")

	// The tasks really are in the queues: fetch them back.
	ch, err := admin.Channel()
	require.NoError(t, err)
	defer ch.Close()
	drain := func(q string) map[string]string {
		t.Helper()
		got := map[string]string{}
		for {
			d, ok, err := ch.Get(q, true)
			require.NoError(t, err)
			if !ok {
				return got
			}
			task, _ := d.Headers["task"].(string)
			id, _ := d.Headers["id"].(string)
			assert.Equal(t, id, d.CorrelationId)
			got[id] = task
		}
	}
	assert.Equal(t, map[string]string{r1.ID(): "tasks.add", r3.ID(): "tasks.add", r4.ID(): "tasks.add"}, drain(qGo))
	assert.Equal(t, map[string]string{kv.ID: "tasks.add", r2.ID(): "tasks.add"}, drain(qPy))
}
