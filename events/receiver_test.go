package events

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// offline returns a Receiver with no connection, for driving the delivery
// path (handle) directly.
func offline() *Receiver {
	cfg := defaultConfig()
	_ = cfg.validate()
	return &Receiver{cfg: cfg, log: cfg.log, subs: map[*Subscription]struct{}{}, done: make(chan struct{}),
		subscribed: make(chan struct{})}
}

func delivery(body string) *amqp091.Delivery {
	return &amqp091.Delivery{ContentType: "application/json", ContentEncoding: "utf-8", Body: []byte(body), RoutingKey: "task.multi"}
}

func startedBody(i int) string {
	return fmt.Sprintf(`{"type":"task-started","uuid":"t%d","hostname":"w@h","clock":%d,"timestamp":1795739176.0}`, i, i)
}

func TestDeliveryPath(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := offline()
	ctx := context.Background()
	var mu sync.Mutex
	var got []string
	sub, err := r.Subscribe(ctx, func(ev Event) {
		mu.Lock()
		got = append(got, ev.(TaskEvent).TaskID())
		mu.Unlock()
	}, OnlyTasks())
	require.NoError(t, err)
	workers, err := r.Subscribe(ctx, func(Event) {}, Types(TypeWorkerHeartbeat), Hostnames("w@h"))
	require.NoError(t, err)

	r.handle(delivery(`[` + startedBody(1) + `,` + startedBody(2) + `]`))
	r.handle(delivery(`[]`))
	r.handle(delivery(`{"type":"worker-heartbeat","hostname":"w@h","freq":2}`))
	r.handle(delivery(`{"type":"worker-heartbeat","hostname":"other@h","freq":2}`))
	r.handle(delivery(`not json`))
	r.handle(delivery(`[` + startedBody(3) + `, 17, {"no":"type"}]`))
	bad := delivery(startedBody(9))
	bad.ContentType = "application/x-python-serialize"
	r.handle(bad)
	zipped := delivery(startedBody(9))
	zipped.Headers = amqp091.Table{"compression": "application/x-gzip"}
	r.handle(zipped)
	r.cfg.maxBody = 10
	r.handle(delivery(startedBody(9)))
	r.cfg.maxBody = DefaultMaxBodySize

	require.NoError(t, sub.Drain(ctx))
	require.NoError(t, workers.Drain(ctx))
	require.Equal(t, []string{"t1", "t2", "t3"}, got)
	st := r.Stats()
	require.EqualValues(t, 9, st.Received)
	require.EqualValues(t, 5, st.Decoded)
	require.EqualValues(t, 1+2+3, st.Malformed)
	require.EqualValues(t, 3, st.Refused)
	require.EqualValues(t, 1, workers.Stats().Delivered)
	ss := sub.Stats()
	require.EqualValues(t, 3, ss.Matched)
	require.EqualValues(t, 3, ss.Delivered)
	<-sub.Closed()
	r.shutdown()
}

func TestOverflowPolicies(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, policy := range []Overflow{DropNewest, DropOldest} {
		t.Run(policy.String(), func(t *testing.T) {
			r := offline()
			release := make(chan struct{})
			var mu sync.Mutex
			var got []string
			sub, err := r.Subscribe(context.Background(), func(ev Event) {
				<-release
				mu.Lock()
				got = append(got, ev.(TaskEvent).TaskID())
				mu.Unlock()
			}, Buffer(3), OnOverflow(policy))
			require.NoError(t, err)
			r.handle(delivery(startedBody(0)))
			// Wait until the handler holds event 0, so the buffer is empty.
			require.Eventually(t, func() bool { return sub.Stats().Pending == 0 }, 5*time.Second, time.Millisecond)
			for i := 1; i <= 10; i++ {
				r.handle(delivery(startedBody(i)))
			}
			st := sub.Stats()
			require.EqualValues(t, 7, st.Dropped)
			require.Equal(t, 3, st.Pending)
			close(release)
			require.NoError(t, sub.Drain(context.Background()))
			st = sub.Stats()
			require.EqualValues(t, 11, st.Matched)
			require.Equal(t, st.Matched, st.Delivered+st.Dropped+st.Discarded)
			require.EqualValues(t, 7, r.Stats().Dropped)
			if policy == DropNewest {
				require.Equal(t, []string{"t0", "t1", "t2", "t3"}, got)
			} else {
				require.Equal(t, []string{"t0", "t8", "t9", "t10"}, got)
			}
			r.shutdown()
		})
	}
}

func TestSubscriptionStopAndPanics(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := offline()
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	sub, err := r.Subscribe(ctx, func(ev Event) {
		calls++
		if calls == 1 {
			panic("boom")
		}
	})
	require.NoError(t, err)
	r.handle(delivery(startedBody(1)))
	r.handle(delivery(startedBody(2)))
	require.Eventually(t, func() bool { return sub.Stats().Delivered == 2 }, 5*time.Second, time.Millisecond)
	require.EqualValues(t, 1, sub.Stats().Panics)
	cancel()
	select {
	case <-sub.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("subscription did not end with its context")
	}
	r.handle(delivery(startedBody(3)))
	require.EqualValues(t, 2, sub.Stats().Matched, "no events after the end")

	// Stop discards what is buffered; Drain with an ended ctx does too.
	block := make(chan struct{})
	s2, err := r.Subscribe(context.Background(), func(Event) { <-block })
	require.NoError(t, err)
	for i := range 5 {
		r.handle(delivery(startedBody(i)))
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer dcancel()
	go func() { time.Sleep(50 * time.Millisecond); close(block) }()
	require.ErrorIs(t, s2.Drain(dctx), context.DeadlineExceeded)
	st := s2.Stats()
	require.Equal(t, st.Matched, st.Delivered+st.Dropped+st.Discarded)
	require.Positive(t, st.Discarded)

	_, err = r.Subscribe(context.Background(), nil)
	require.Error(t, err)
	_, err = r.Subscribe(context.Background(), func(Event) {}, Buffer(0))
	require.Error(t, err)
	r.shutdown()
	_, err = r.Subscribe(context.Background(), func(Event) {})
	require.ErrorIs(t, err, ErrClosed)
}

func TestOptionsRefuseOverlongNames(t *testing.T) {
	long := strings.Repeat("n", 256)
	for name, opt := range map[string]Option{
		"QueueName":   QueueName(long),
		"QueuePrefix": QueuePrefix(strings.Repeat("p", 230)),
		"Bind":        Bind(long),
	} {
		cfg := defaultConfig()
		opt(&cfg)
		err := cfg.validate()
		if err == nil || !strings.Contains(err.Error(), "255-byte limit") {
			t.Errorf("%s: %v", name, err)
		}
	}
	cfg := defaultConfig()
	QueueName(strings.Repeat("n", 255))(&cfg)
	if err := cfg.validate(); err != nil {
		t.Errorf("255 bytes fit: %v", err)
	}
}
