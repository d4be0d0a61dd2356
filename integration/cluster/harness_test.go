package cluster

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/integration/harness"
)

// TestClusterHarness proves the harness against the real nodes: a quorum
// queue keeps its confirmed messages and elects a new leader when its
// leader's node is killed, the killed node comes back into the cluster,
// and a classic queue lives on the node it was declared through. It talks
// to the nodes with amqp091-go directly.
func TestClusterHarness(t *testing.T) {
	ctx := harness.Ctx(t, 4*time.Minute)
	t.Logf("cluster start: %s", cluster.StartupTime().Round(time.Millisecond))

	running, err := cluster.RunningNodes(ctx)
	require.NoError(t, err)
	require.Equal(t, []int{1, 2, 3}, running)
	for i := 1; i <= 3; i++ {
		require.True(t, cluster.Running(ctx, i), "node %d running", i)
	}

	// The queues need no cleanup: the cluster's state goes with it.
	qq := harness.Name("cluster", "qq")
	ch := channel(t, dial(t, 1))
	_, err = ch.QueueDeclare(qq, true, false, false, false, amqp091.Table{
		"x-queue-type": "quorum",
		"x-expires":    int32(10 * 60 * 1000),
	})
	require.NoError(t, err)
	leader, err := cluster.QueueLeader(ctx, qq)
	require.NoError(t, err)
	require.Equal(t, 1, leader, "a quorum queue's leader is the node it was declared through")

	require.NoError(t, ch.Confirm(false))
	const n = 100
	confirms := make([]*amqp091.DeferredConfirmation, 0, n)
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", qq, false, false, amqp091.Publishing{
			DeliveryMode: amqp091.Persistent,
			ContentType:  "text/plain",
			Body:         fmt.Appendf(nil, "message %d", i),
		})
		require.NoError(t, err)
		confirms = append(confirms, dc)
	}
	for i, dc := range confirms {
		ack, err := dc.WaitContext(ctx)
		require.NoError(t, err)
		require.True(t, ack, "message %d nacked", i)
	}

	killed := time.Now()
	require.NoError(t, cluster.Kill(1))
	require.False(t, cluster.Running(ctx, 1))
	var newLeader int
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		newLeader, err = cluster.QueueLeader(ctx, qq)
		require.NoError(c, err)
		require.NotEqual(c, 1, newLeader, "leader still on the killed node")
	}, 60*time.Second, 100*time.Millisecond)
	failover := time.Since(killed)
	require.Contains(t, []int{2, 3}, newLeader)

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		count, err := passiveCount(2, qq)
		require.NoError(c, err, "passive declare through node 2")
		require.Equal(c, n, count, "messages through node 2")
	}, 30*time.Second, 200*time.Millisecond)

	restarted := time.Now()
	require.NoError(t, cluster.Start(ctx, 1))
	restart := time.Since(restarted)
	require.True(t, cluster.Running(ctx, 1))
	running, err = cluster.RunningNodes(ctx)
	require.NoError(t, err)
	require.Equal(t, []int{1, 2, 3}, running, "node 1 rejoined")

	cq := harness.Name("cluster", "cq")
	ch3 := channel(t, dial(t, 3))
	_, err = ch3.QueueDeclare(cq, true, false, false, false, amqp091.Table{
		"x-queue-type": "classic",
		"x-expires":    int32(10 * 60 * 1000),
	})
	require.NoError(t, err)
	home, err := cluster.QueueNode(ctx, cq)
	require.NoError(t, err)
	require.Equal(t, 3, home, "a classic queue's home is the node it was declared through")

	t.Logf("timings: cluster start %s, kill -9 of the leader's node → new leader (node %d) seen %s, restart of node 1 → rejoined %s",
		cluster.StartupTime().Round(time.Millisecond), newLeader, failover.Round(time.Millisecond), restart.Round(time.Millisecond))
}

// dial connects to node i, names the connection after the test, and
// closes it at the end of t.
func dial(t *testing.T, i int) *amqp091.Connection {
	t.Helper()
	cfg := amqp091.Config{
		Dial:       amqp091.DefaultDial(5 * time.Second),
		Properties: amqp091.Table{"connection_name": harness.Name("cluster", t.Name(), fmt.Sprint(i))},
	}
	conn, err := amqp091.DialConfig(cluster.URL(i), cfg)
	require.NoError(t, err, "dial node %d", i)
	t.Cleanup(func() { _ = conn.Close() }) // fails harmlessly if the node was killed
	return conn
}

func channel(t *testing.T, conn *amqp091.Connection) *amqp091.Channel {
	t.Helper()
	ch, err := conn.Channel()
	require.NoError(t, err)
	return ch
}

// passiveCount is queue's message count from a passive declare through
// node i, on a connection of its own: a failed passive declare kills its
// channel, and while a quorum queue elects a leader it can fail.
func passiveCount(i int, queue string) (int, error) {
	conn, err := amqp091.DialConfig(cluster.URL(i), amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return 0, err
	}
	return q.Messages, nil
}
