package amqp

import (
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// brokerForTest returns the test broker's URL, or skips (fails with
// STALK_REQUIRE_BROKER=1) when nothing answers there.
func brokerForTest(t *testing.T) string {
	t.Helper()
	u := os.Getenv("STALK_BROKER_URL")
	if u == "" {
		u = "amqp://guest:guest@127.0.0.1:5672/"
	}
	pu, err := url.Parse(u)
	require.NoError(t, err)
	host := pu.Host
	if pu.Port() == "" {
		host = net.JoinHostPort(pu.Hostname(), "5672")
	}
	conn, err := net.DialTimeout("tcp", host, 2*time.Second)
	if err != nil {
		if os.Getenv("STALK_REQUIRE_BROKER") == "1" {
			t.Fatalf("no broker at %s: %v", host, err)
		}
		t.Skipf("no broker at %s: %v", host, err)
	}
	_ = conn.Close()
	return u
}

// A per-task lane channel that the broker closes with a channel-level error,
// while the connection stays up, takes every consumer on it along. The lane
// is reopened and its pending results followed again: a result published
// after the close still arrives.
func TestPerTaskLaneClosedByBrokerIsReopened(t *testing.T) {
	u := brokerForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := uuid.NewString()[:8]
	taskQueue := "stalk-test-lane-" + run
	prefix := "stalk-test-lane-" + run + "-reply."
	c, err := Dial(ctx, u, WithLanes(1), WithReplyQueuePrefix(prefix), WithResultExpires(time.Minute))
	require.NoError(t, err)
	defer c.Close()

	// A task nobody consumes: its reply queue is declared and followed.
	r, err := c.Send(ctx, "tasks.add", Args(40, 2), Queue(taskQueue))
	require.NoError(t, err)
	raw, err := amqp091.Dial(u)
	require.NoError(t, err)
	defer raw.Close()
	cleanup, err := raw.Channel()
	require.NoError(t, err)
	defer func() {
		_, _ = cleanup.QueueDelete(taskQueue, false, false, false)
		_, _ = cleanup.QueueDelete(prefix+r.ID(), false, false, false)
	}()

	p := c.cons.mode.(*perTaskReplies)
	l := p.lanes[0]
	l.mu.Lock()
	before, ch := l.chGen, l.ch
	l.mu.Unlock()
	// Acknowledging a delivery tag the channel never had is a channel
	// error: the broker closes the lane's channel, not the connection.
	require.NoError(t, ch.Ack(424242, false))
	require.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.chGen != before && l.ch != nil && !l.ch.IsClosed()
	}, 10*time.Second, 10*time.Millisecond, "the lane got a new channel")
	require.Eventually(t, func() bool {
		f := p.followOf(r.ID())
		return f != nil && f.chGen != before
	}, 10*time.Second, 10*time.Millisecond, "the pending result is followed on the new channel")

	// The worker's part: the final state into the task's reply queue.
	pub, err := raw.Channel()
	require.NoError(t, err)
	body, err := json.Marshal(map[string]any{"task_id": r.ID(), "status": "SUCCESS", "result": 42, "traceback": nil, "children": []any{}})
	require.NoError(t, err)
	require.NoError(t, pub.PublishWithContext(ctx, "", prefix+r.ID(), false, false, amqp091.Publishing{
		ContentType: "application/json", ContentEncoding: "utf-8", CorrelationId: r.ID(), Body: body,
	}))
	gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
	defer gcancel()
	v, err := r.Get(gctx)
	require.NoError(t, err)
	require.Equal(t, int64(42), v)
}
