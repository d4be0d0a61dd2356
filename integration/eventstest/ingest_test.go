package eventstest

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

const ingestEvents = 20000

// TestEventsIngest measures how fast a Receiver takes in events: the test
// publishes 20,000 Celery-shaped events (single objects and task.multi
// arrays) to celeryev while a Receiver consumes them, and times the span
// from the first publish to the last event handled. A second, deliberately
// slow subscription shows that drops are counted exactly. Run it alone,
// without -race, for the number that matters:
//
//	STALK_REQUIRE_BROKER=1 go test -run TestEventsIngest -v ./integration/eventstest/
func TestEventsIngest(t *testing.T) {
	key := "task.stalk" + harness.RunID + "ingest"
	// A generous TTL, so that no event expires in the queue under -race.
	r := receiver(t, events.Bind(key), events.WithoutWake(), events.MessageTTL(5*time.Minute))

	var fast atomic.Int64
	allIn := make(chan struct{})
	st := events.NewState(events.MaxTasks(ingestEvents))
	fastSub, err := r.Subscribe(harness.Ctx(t, 2*time.Minute), func(ev events.Event) {
		st.Apply(ev)
		if fast.Add(1) == ingestEvents {
			close(allIn)
		}
	}, events.Buffer(ingestEvents))
	require.NoError(t, err)
	slowSub, err := r.Subscribe(harness.Ctx(t, 2*time.Minute), func(events.Event) {
		time.Sleep(200 * time.Microsecond)
	}, events.Buffer(100), events.OnOverflow(events.DropOldest))
	require.NoError(t, err)

	ch, confirms := confirmingChannel(t, ingestEvents)
	base := float64(time.Now().UnixNano()) / 1e9
	start := time.Now()
	for i := range ingestEvents {
		var body string
		switch i % 4 {
		case 0:
			body = fmt.Sprintf(`{"hostname": "ingest@test", "utcoffset": 0, "pid": 1, "clock": %d, "uuid": "ingest-%d", "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}", "root_id": "ingest-%d", "parent_id": null, "retries": 0, "eta": null, "expires": null, "timestamp": %f, "type": "task-received"}`, i, i/4, i/4, base)
		case 1:
			body = fmt.Sprintf(`[{"hostname": "ingest@test", "utcoffset": 0, "pid": 1, "clock": %d, "uuid": "ingest-%d", "timestamp": %f, "type": "task-started"}]`, i, i/4, base)
		case 2:
			body = fmt.Sprintf(`[{"hostname": "ingest@test", "utcoffset": 0, "pid": 1, "clock": %d, "uuid": "ingest-%d", "result": "5", "runtime": 0.0012, "timestamp": %f, "type": "task-succeeded"}]`, i, i/4, base)
		default:
			body = fmt.Sprintf(`{"active": 0, "clock": %d, "freq": 2.0, "hostname": "ingest@test", "loadavg": [0.05, 0.38, 0.28], "pid": 1, "processed": %d, "sw_ident": "py-celery", "sw_sys": "Linux", "sw_ver": "5.2.6", "timestamp": %f, "type": "worker-heartbeat", "utcoffset": 0}`, i, i, base)
		}
		require.NoError(t, ch.Publish(events.Exchange, key, false, false, amqp091.Publishing{
			ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp091.Transient, Body: []byte(body),
		}))
	}
	for i := range ingestEvents {
		select {
		case c := <-confirms:
			require.True(t, c.Ack)
		case <-time.After(60 * time.Second):
			t.Fatalf("only %d of %d publisher confirms arrived; %d events handled; receiver stats %+v",
				i, ingestEvents, fast.Load(), r.Stats())
		}
	}
	pubRate := float64(ingestEvents) / time.Since(start).Seconds()
	select {
	case <-allIn:
	case <-time.After(90 * time.Second):
		t.Fatalf("only %d of %d events handled; receiver stats %+v", fast.Load(), ingestEvents, r.Stats())
	}
	elapsed := time.Since(start)
	rate := float64(ingestEvents) / elapsed.Seconds()

	// The consumer offers each event to both subscriptions in turn: let it
	// finish the last one before draining.
	require.Eventually(t, func() bool { return slowSub.Stats().Matched == ingestEvents }, 10*time.Second, time.Millisecond)
	require.NoError(t, slowSub.Drain(harness.Ctx(t, 30*time.Second)))
	require.NoError(t, fastSub.Drain(harness.Ctx(t, 30*time.Second)))
	rs := r.Stats()
	require.EqualValues(t, ingestEvents, rs.Received)
	require.EqualValues(t, ingestEvents, rs.Decoded, "every event decoded")
	require.Zero(t, rs.Malformed)
	fs := fastSub.Stats()
	require.EqualValues(t, ingestEvents, fs.Delivered)
	require.Zero(t, fs.Dropped)
	ss := slowSub.Stats()
	require.EqualValues(t, ingestEvents, ss.Matched)
	require.Equal(t, ss.Matched, ss.Delivered+ss.Dropped, "decoded = delivered + dropped")
	require.Positive(t, ss.Dropped, "the slow handler cannot keep up")
	require.Equal(t, rs.Dropped, ss.Dropped)
	require.Equal(t, ingestEvents/4, st.Len())
	tk, _ := st.Task("ingest-7")
	require.Equal(t, result.Success, tk.State)

	race := ""
	if raceEnabled {
		race = " (race detector on: expect a several-fold lower rate than without -race)"
	}
	t.Logf("ingest: %d events published and decoded in %s: %.0f events/s%s; publishing alone took %.0f events/s; slow handler: delivered %d, dropped %d",
		ingestEvents, elapsed.Round(time.Millisecond), rate, race, pubRate, ss.Delivered, ss.Dropped)
	harness.Measured("events ingest: %d events, %.0f events/s published, decoded and dispatched end to end (State.Apply on the fast subscription)%s; publisher alone %.0f events/s. Slow handler (200µs, buffer 100, drop-oldest): delivered %d + dropped %d = %d. Command: `STALK_REQUIRE_BROKER=1 go test -run TestEventsIngest -v ./integration/eventstest/`",
		ingestEvents, rate, race, pubRate, ss.Delivered, ss.Dropped, ss.Delivered+ss.Dropped)
}

// TestEventsDurableBacklog: a Durable receiver's queue keeps the events
// published while no receiver runs, and a new receiver on it hands every
// one of them to its first subscription, even though it starts consuming
// before Subscribe. Draining that backlog also measures the receiver on
// its own, without a publisher to wait for.
func TestEventsDurableBacklog(t *testing.T) {
	key := "task.stalk" + harness.RunID + "backlog"
	name := harness.Name("events-backlog")
	opts := []events.Option{events.Bind(key), events.Durable(), events.QueueName(name),
		events.QueueExpires(2 * time.Minute), events.MessageTTL(5 * time.Minute), events.WithoutWake(),
		events.ConnectionName(harness.Name("events", t.Name()))}
	ctx := harness.Ctx(t, 2*time.Minute)
	first, err := events.Dial(ctx, harness.BrokerURL(), opts...)
	require.NoError(t, err)
	require.NoError(t, first.Close()) // the queue stays, and keeps receiving
	t.Cleanup(func() { _, _ = harness.Rabbitmqctl("delete_queue", name) })

	ch, confirms := confirmingChannel(t, ingestEvents)
	ts := float64(time.Now().UnixNano()) / 1e9
	for i := range ingestEvents {
		body := fmt.Sprintf(`{"hostname": "backlog@test", "utcoffset": 0, "pid": 1, "clock": %d, "uuid": "backlog-%d", "timestamp": %f, "type": "task-started"}`, i+1, i, ts)
		require.NoError(t, ch.Publish(events.Exchange, key, false, false, amqp091.Publishing{
			ContentType: "application/json", ContentEncoding: "utf-8", Body: []byte(body)}))
	}
	for range ingestEvents {
		select {
		case c := <-confirms:
			require.True(t, c.Ack)
		case <-ctx.Done():
			t.Fatal("publisher confirms")
		}
	}

	start := time.Now()
	r, err := events.Dial(ctx, harness.BrokerURL(), opts...)
	require.NoError(t, err)
	defer r.Close()
	time.Sleep(200 * time.Millisecond) // deliveries arrive before anyone subscribes
	var n atomic.Int64
	all := make(chan struct{})
	st := events.NewState(events.MaxTasks(ingestEvents))
	_, err = r.Subscribe(ctx, func(ev events.Event) {
		st.Apply(ev)
		if n.Add(1) == ingestEvents {
			close(all)
		}
	}, events.Buffer(ingestEvents))
	require.NoError(t, err)
	select {
	case <-all:
	case <-ctx.Done():
		t.Fatalf("%d of %d backlog events handled; stats %+v", n.Load(), ingestEvents, r.Stats())
	}
	elapsed := time.Since(start) - 200*time.Millisecond
	rs := r.Stats()
	require.EqualValues(t, ingestEvents, rs.Decoded)
	require.Zero(t, rs.Dropped)
	require.Equal(t, ingestEvents, st.Len())
	race := ""
	if raceEnabled {
		race = " (race detector on)"
	}
	t.Logf("backlog: %d events drained, decoded and applied to a State in %s: %.0f events/s%s",
		ingestEvents, elapsed.Round(time.Millisecond), float64(ingestEvents)/elapsed.Seconds(), race)
}

// A Durable receiver whose connection drops before anyone subscribed loses
// nothing: what it held was not acknowledged, so the broker delivers it
// again on the next connection, and the first subscription gets every
// event exactly once.
func TestEventsDurableBacklogAcrossReconnect(t *testing.T) {
	const n = 2000
	key := "task.stalk" + harness.RunID + "backlog-reconnect"
	name := harness.Name("events-backlog-reconnect")
	connName := harness.Name("events", t.Name())
	opts := []events.Option{events.Bind(key), events.Durable(), events.QueueName(name),
		events.QueueExpires(2 * time.Minute), events.WithoutWake(), events.ConnectionName(connName)}
	ctx := harness.Ctx(t, time.Minute)
	r, err := events.Dial(ctx, harness.BrokerURL(), opts...)
	require.NoError(t, err)
	defer r.Close()
	t.Cleanup(func() { _, _ = harness.Rabbitmqctl("delete_queue", name) })

	p := newPublisher(t)
	for i := range n {
		p.publishEvent(t, key, "application/json", []byte(fmt.Sprintf(
			`{"hostname": "backlog@test", "utcoffset": 0, "pid": 1, "clock": %d, "uuid": "br-%d", "timestamp": 1795739176.0, "type": "task-started"}`, i+1, i)))
	}
	time.Sleep(300 * time.Millisecond)   // the receiver holds its prefetch window, unhandled
	harness.CloseConnection(t, connName) // before anyone subscribed
	require.Eventually(t, func() bool { return r.Stats().Consumes >= 2 }, 20*time.Second, 10*time.Millisecond)

	var got atomic.Int64
	_, err = r.Subscribe(ctx, func(events.Event) { got.Add(1) }, events.Buffer(n))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return got.Load() == n }, 20*time.Second, 10*time.Millisecond,
		"every event of the backlog reaches the first subscription")
	time.Sleep(200 * time.Millisecond)
	require.EqualValues(t, n, got.Load(), "and only once")
	require.EqualValues(t, n, r.Stats().Decoded)
}
