// Package eventstest runs the events package against a real RabbitMQ and a
// real Celery 5.2.6 worker started with -E.
package eventstest

import (
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/integration/harness"
)

// worker is the Celery worker (with task events on) shared by the tests.
var worker *harness.Worker

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, harness.Shared, setup))
}

func setup() error {
	w, err := harness.StartWorker(harness.WorkerConfig{Events: true, Name: "ev-" + harness.RunID})
	if err != nil {
		return err
	}
	worker = w
	return nil
}

// publisher is a plain amqp091 connection the tests publish tasks and
// hand-made events with.
type publisher struct {
	mu   sync.Mutex
	conn *amqp091.Connection
	ch   *amqp091.Channel
}

func newPublisher(t *testing.T) *publisher {
	t.Helper()
	conn, err := amqp091.DialConfig(harness.BrokerURL(), amqp091.Config{
		Properties: amqp091.Table{"connection_name": harness.Name("events-pub")},
	})
	require.NoError(t, err)
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, events.DeclareExchange(ch))
	t.Cleanup(func() { conn.Close() })
	return &publisher{conn: conn, ch: ch}
}

// taskMsg is a task to publish in Celery's protocol v2.
type taskMsg struct {
	id       string
	name     string
	args     []any
	argsrepr string
	expires  string // ISO-8601, "" for none
}

// sendTask publishes a protocol v2 task message (PROTOCOL.md §2.1) to the
// shared worker's queue, with reply_to "" so that no result is published.
func (p *publisher) sendTask(t *testing.T, m taskMsg) string {
	t.Helper()
	if m.id == "" {
		m.id = uuid.NewString()
	}
	if m.args == nil {
		m.args = []any{}
	}
	var expires any
	if m.expires != "" {
		expires = m.expires
	}
	body, err := json.Marshal([]any{m.args, map[string]any{},
		map[string]any{"callbacks": nil, "errbacks": nil, "chain": nil, "chord": nil}})
	require.NoError(t, err)
	headers := amqp091.Table{
		"lang": "py", "task": m.name, "id": m.id, "shadow": nil, "eta": nil, "expires": expires,
		"group": nil, "group_index": nil, "retries": int32(0), "timelimit": []any{nil, nil},
		"root_id": m.id, "parent_id": nil, "argsrepr": m.argsrepr, "kwargsrepr": "{}",
		"origin": events.ClientHostname(), "ignore_result": false,
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	err = p.ch.Publish("", worker.Queue, false, false, amqp091.Publishing{
		ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp091.Persistent,
		CorrelationId: m.id, Headers: headers, Body: body,
	})
	require.NoError(t, err)
	return m.id
}

// sendTaskSent publishes the task-sent event for m, as a Celery client with
// task_send_sent_event does.
func (p *publisher) sendTaskSent(t *testing.T, m taskMsg) events.TaskSent {
	t.Helper()
	ev := events.NewTaskSent(events.TaskSent{UUID: m.id, Name: m.name, Args: m.argsrepr, Kwargs: "{}",
		Queue: worker.Queue, Expires: m.expires})
	msg, err := events.TaskSentPublishing(ev)
	require.NoError(t, err)
	p.mu.Lock()
	defer p.mu.Unlock()
	require.NoError(t, events.DeclareExchange(p.ch))
	require.NoError(t, p.ch.PublishWithContext(harness.Ctx(t, 10*time.Second), events.Exchange, events.RoutingKeyTaskSent, false, false, msg))
	return ev
}

// confirmingChannel opens a channel of its own in confirm mode, with room
// for n publisher confirms, for tests that publish many events and then
// wait for every confirm.
func confirmingChannel(t *testing.T, n int) (*amqp091.Channel, <-chan amqp091.Confirmation) {
	t.Helper()
	conn, err := amqp091.Dial(harness.BrokerURL())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	require.NoError(t, err)
	require.NoError(t, ch.Confirm(false))
	return ch, ch.NotifyPublish(make(chan amqp091.Confirmation, n))
}

// publishEvent publishes a raw body to celeryev.
func (p *publisher) publishEvent(t *testing.T, key, contentType string, body []byte) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	require.NoError(t, p.ch.Publish(events.Exchange, key, false, false, amqp091.Publishing{
		ContentType: contentType, ContentEncoding: "utf-8", DeliveryMode: amqp091.Transient, Body: body,
	}))
}

// publishJSON publishes v as a JSON event body.
func (p *publisher) publishJSON(t *testing.T, key string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	p.publishEvent(t, key, "application/json", b)
}

func receiver(t *testing.T, opts ...events.Option) *events.Receiver {
	t.Helper()
	r, err := events.Dial(harness.Ctx(t, 20*time.Second), harness.BrokerURL(),
		append([]events.Option{events.ConnectionName(harness.Name("events", t.Name()))}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	return r
}

// recorder collects the events of some tasks, in arrival order.
type recorder struct {
	mu  sync.Mutex
	ids map[string]bool
	evs []events.Event
}

func record(t *testing.T, r *events.Receiver, ids ...string) *recorder {
	t.Helper()
	rec := &recorder{ids: map[string]bool{}}
	for _, id := range ids {
		rec.ids[id] = true
	}
	sub, err := r.Subscribe(harness.Ctx(t, 2*time.Minute), func(ev events.Event) {
		te, ok := ev.(events.TaskEvent)
		if !ok {
			return
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if rec.ids[te.TaskID()] {
			rec.evs = append(rec.evs, ev)
		}
	}, events.OnlyTasks())
	require.NoError(t, err)
	t.Cleanup(sub.Stop)
	return rec
}

func (r *recorder) types(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.evs {
		if ev.(events.TaskEvent).TaskID() == id {
			out = append(out, ev.EventHeader().Type)
		}
	}
	return out
}

func (r *recorder) find(id, typ string) events.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.evs {
		if ev.(events.TaskEvent).TaskID() == id && ev.EventHeader().Type == typ {
			return ev
		}
	}
	return nil
}

// waitFor waits until the task has an event of typ, or fails with what it
// has seen.
func (r *recorder) waitFor(t *testing.T, id, typ string, within time.Duration) events.Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if ev := r.find(id, typ); ev != nil {
			return ev
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s event for %s within %s; saw %s\nworker log:\n%s", typ, id, within,
		strings.Join(r.types(id), ", "), tail(worker.Log(), 3000))
	return nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
