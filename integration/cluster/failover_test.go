package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/echoworker"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

// allUp restarts, at the end of t, every node t stopped or killed, so that
// the next test starts with the whole cluster.
func allUp(t *testing.T) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for i := 1; i <= 3; i++ {
			if !cluster.Running(ctx, i) {
				if err := cluster.Start(ctx, i); err != nil {
					t.Errorf("restart node %d: %v", i, err)
				}
			}
		}
	})
}

// urlsFrom is the cluster's URL list starting at node first, in Celery's
// ";"-separated form.
func urlsFrom(first int) string {
	var urls []string
	for k := 0; k < 3; k++ {
		urls = append(urls, cluster.URL((first-1+k)%3+1))
	}
	return strings.Join(urls, ";")
}

// nodeOf is the node index of a connection's redacted broker URL.
func nodeOf(url string) int {
	for i := 1; i <= 3; i++ {
		if strings.Contains(url, fmt.Sprintf(":%d", 5680+i)) {
			return i
		}
	}
	return 0
}

func clusterClient(t *testing.T, name string, first int, opts ...amqp.Option) *amqp.Client {
	t.Helper()
	base := []amqp.Option{
		amqp.WithResultExpires(5 * time.Minute),
		amqp.WithReplyQueuePrefix(harness.Name("reply", name) + "."),
		amqp.WithConnectionName(harness.Name(name)),
		amqp.WithLogger(zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)),
		// Redial fast: the test measures failover, not the backoff.
		amqp.WithBackoff(func(int) time.Duration { return 100 * time.Millisecond }),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := amqp.Dial(ctx, urlsFrom(first), append(base, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// declareQueue declares a task queue through node i, so that it lives
// there (a classic queue) or is led from there (a quorum queue).
func declareQueue(t *testing.T, i int, name string, quorum bool) {
	t.Helper()
	var args amqp091.Table
	if quorum {
		args = amqp091.Table{"x-queue-type": "quorum"}
	}
	ch := channel(t, dial(t, i))
	_, err := ch.QueueDeclare(name, true, false, false, false, args)
	require.NoError(t, err)
}

// waitReadyOff waits until both of c's connections are Ready on a node
// other than dead, and returns how long that took from since.
func waitReadyOff(t *testing.T, c *amqp.Client, dead int, since time.Time) (time.Duration, int) {
	t.Helper()
	var node int
	require.Eventually(t, func() bool {
		res, pub := c.Status()
		node = nodeOf(res.Broker)
		return res.State == amqp.Ready && pub.State == amqp.Ready && node != dead && nodeOf(pub.Broker) != dead
	}, 60*time.Second, 10*time.Millisecond, "client Ready on another node")
	return time.Since(since), node
}

// Shared mode with a quorum reply queue loses nothing when nodes die: with
// 1,000 results pending and tasks still being sent, the node the client is
// connected to is killed (kill -9), and then the node leading the reply
// queue is stopped. Every task's result arrives, with its value, once.
func TestClusterSharedQuorumFailover(t *testing.T) {
	allUp(t)
	ctx := harness.Ctx(t, 5*time.Minute)
	tq := harness.Name("failover-tasks")
	declareQueue(t, 2, tq, true)
	c := clusterClient(t, "failover", 1, amqp.WithReplyMode(amqp.Shared), amqp.WithReplyQueueType(amqp.Quorum),
		amqp.WithDefaultQueue(tq), amqp.WithTaskQueues(amqp.TaskQueue{Name: tq, Type: amqp.Quorum}))
	res, _ := c.Status()
	require.Equal(t, 1, nodeOf(res.Broker), "the client starts on the first URL's node")

	var (
		mu      sync.Mutex
		sent    = map[string]int{} // task id → the value it must return
		settled = map[string]int{} // task id → settlements
		wrong   atomic.Int64
		rs      []*result.AsyncResult
	)
	send := func(i int) error {
		r, err := c.Send(ctx, "tasks.echo", amqp.Args(i))
		if err != nil {
			return err
		}
		mu.Lock()
		sent[r.ID()] = i
		rs = append(rs, r)
		mu.Unlock()
		id := r.ID()
		r.Then(func(v any) {
			mu.Lock()
			settled[id]++
			want := sent[id]
			mu.Unlock()
			if v != int64(want) {
				wrong.Add(1)
			}
		}, func(err error) {
			mu.Lock()
			settled[id]++
			mu.Unlock()
			wrong.Add(1)
			t.Errorf("task %s failed: %v", id, err)
		})
		return nil
	}
	for i := range 1000 {
		require.NoError(t, send(i))
	}
	require.Equal(t, 1000, c.Stats().Pending, "1,000 results pending: no worker yet")

	// Tasks keep being sent, through both faults.
	stop := make(chan struct{})
	var senders sync.WaitGroup
	var sendErrs atomic.Int64
	senders.Add(1)
	go func() {
		defer senders.Done()
		for i := 1000; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if err := send(i); err != nil {
				sendErrs.Add(1)
				t.Logf("send during failover: %v", err)
			}
		}
	}()

	// 1. Kill the node the client is on.
	killed := time.Now()
	require.NoError(t, cluster.Kill(1))
	recovery, node := waitReadyOff(t, c, 1, killed)
	t.Logf("kill -9 of node 1: client Ready on node %d after %s", node, recovery.Round(time.Millisecond))

	leader, err := cluster.QueueLeader(ctx, c.ReplyQueue(""))
	require.NoError(t, err)
	require.NotEqual(t, 1, leader, "leadership moved off the killed node")
	worker := 2
	if leader == 2 {
		worker = 3
	}
	w, err := echoworker.Start(ctx, echoworker.Config{URL: cluster.URL(worker), Queue: tq, QueueType: "quorum", NoDeclare: true, Channels: 2})
	require.NoError(t, err)
	defer w.Stop()
	require.Eventually(t, func() bool { return w.Processed() > 1200 }, time.Minute, 10*time.Millisecond)

	// 2. Stop the node that leads the reply queue (node 1 first comes
	// back: two of three nodes keep the majority).
	require.NoError(t, cluster.Start(ctx, 1))
	before := w.Processed()
	stopped := time.Now()
	require.NoError(t, cluster.Stop(ctx, leader))
	require.Eventually(t, func() bool { return c.Stats().Received > before+100 }, time.Minute, 10*time.Millisecond)
	t.Logf("stop_app of node %d (reply queue leader): results flowing again after %s", leader, time.Since(stopped).Round(time.Millisecond))
	require.NoError(t, cluster.Start(ctx, leader))

	close(stop)
	senders.Wait()
	mu.Lock()
	all := append([]*result.AsyncResult(nil), rs...)
	mu.Unlock()
	lost := 0
	for _, r := range all {
		gctx, cancel := context.WithTimeout(ctx, time.Minute)
		if _, err := r.Get(gctx); err != nil {
			lost++
			t.Logf("task %s: %v", r.ID(), err)
		}
		cancel()
	}
	time.Sleep(200 * time.Millisecond) // late duplicates, if any, reach the callbacks
	mu.Lock()
	twice := 0
	for _, n := range settled {
		if n > 1 {
			twice++
		}
	}
	mu.Unlock()
	st := c.Stats()
	t.Logf("%d tasks: %d lost, %d wrong, %d settled twice; %d duplicate final states ignored; %d sends failed; reconnects %d",
		len(all), lost, wrong.Load(), twice, st.Duplicates, sendErrs.Load(), st.Reconnects)
	assert.Greater(t, len(all), 1000)
	assert.Zero(t, lost, "lost")
	assert.Zero(t, wrong.Load(), "wrong")
	assert.Zero(t, twice, "settled twice")
	assert.Zero(t, st.Pending)
}

// A classic reply queue lives on one node. When that node dies, a wait on
// a result in it says so (naming the node, errors.Is ErrResultLost) instead
// of hanging in silence; a shared-mode Send is refused meanwhile; and once
// the node is back, the result arrives. The worker is a real Celery 5.2.6
// worker, on a classic task queue of a node that stays up.
func TestClusterClassicReplyQueueLost(t *testing.T) {
	allUp(t)
	ctx := harness.Ctx(t, 4*time.Minute)
	tq := harness.Name("classic-lost")
	w, err := harness.StartWorker(harness.WorkerConfig{Queue: tq, BrokerURL: cluster.URL(3), Concurrency: 4})
	require.NoError(t, err)
	defer w.Stop()
	modes := map[string]*amqp.Client{
		"per-task": clusterClient(t, "lost-pertask", 1, amqp.WithDefaultQueue(tq)),
		"shared":   clusterClient(t, "lost-shared", 1, amqp.WithDefaultQueue(tq), amqp.WithReplyMode(amqp.Shared)),
	}
	slow := map[string]*result.AsyncResult{}
	for mode, c := range modes {
		r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 2))
		require.NoError(t, err, mode)
		v, err := r.Get(ctx)
		require.NoError(t, err, mode)
		require.Equal(t, int64(3), v)
		slow[mode], err = c.Send(ctx, "tasks.slow", amqp.Args(20))
		require.NoError(t, err, mode)
	}

	killed := time.Now()
	require.NoError(t, cluster.Kill(1))
	for mode, c := range modes {
		recovery, node := waitReadyOff(t, c, 1, killed)
		t.Logf("%s: client Ready on node %d after %s", mode, node, recovery.Round(time.Millisecond))
	}
	node1 := cluster.Node(1)
	for mode, r := range slow {
		gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		start := time.Now()
		_, err := r.Get(gctx)
		cancel()
		require.Error(t, err, mode)
		assert.ErrorIs(t, err, result.ErrResultLost, mode)
		assert.ErrorIs(t, err, result.ErrTimeout, mode)
		assert.Contains(t, err.Error(), node1, "%s: the error names the node", mode)
		assert.Less(t, time.Since(start), 5*time.Second, "%s: no hang past ctx", mode)
		t.Logf("%s: %v", mode, err)
	}
	_, err = modes["shared"].Send(ctx, "tasks.add", amqp.Args(1, 1))
	require.ErrorIs(t, err, amqp.ErrReplyQueueUnavailable, "its result would be dropped")
	assert.Contains(t, err.Error(), node1)
	assert.Positive(t, modes["shared"].Stats().Unreachable)

	require.NoError(t, cluster.Start(ctx, 1))
	t.Logf("node 1 back after %s", time.Since(killed).Round(time.Millisecond))
	// One pending result was marked unreachable once for the outage, not
	// once for every look at the node while it was down.
	un := modes["per-task"].Stats().Unreachable
	t.Logf("per-task: marked unreachable %d time(s) during the outage", un)
	assert.GreaterOrEqual(t, un, int64(1))
	assert.LessOrEqual(t, un, int64(2), "warned once per outage")
	for mode, r := range slow {
		v, err := r.Get(ctx)
		require.NoError(t, err, "%s: the result arrives once the node is back", mode)
		assert.Equal(t, 20.0, toFloat(v), mode)
	}
	r, err := modes["shared"].Send(ctx, "tasks.add", amqp.Args(2, 2))
	require.NoError(t, err)
	v, err := r.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(4), v)
}

func toFloat(v any) float64 {
	switch n := v.(type) {
	case int64:
		return float64(n)
	case float64:
		return n
	}
	return -1
}

// The first URL's node being down at Dial is normal: the client connects to
// the next. Remote control and the event stream keep working after the node
// they are on dies.
func TestClusterDialFirstNodeDown(t *testing.T) {
	allUp(t)
	ctx := harness.Ctx(t, 4*time.Minute)
	require.NoError(t, cluster.Stop(ctx, 1))
	tq := harness.Name("first-down")
	w, err := harness.StartWorker(harness.WorkerConfig{Queue: tq, BrokerURL: cluster.URL(3), Concurrency: 2, Events: true})
	require.NoError(t, err)
	defer w.Stop()

	start := time.Now()
	c := clusterClient(t, "first-down", 1, amqp.WithDefaultQueue(tq), amqp.WithReplyMode(amqp.Shared),
		amqp.WithReplyQueueType(amqp.Quorum), amqp.WithEvents())
	res, pub := c.Status()
	t.Logf("Dial with node 1 down: %s, on %s", time.Since(start).Round(time.Millisecond), res.Broker)
	assert.Equal(t, 2, nodeOf(res.Broker))
	assert.Equal(t, 2, nodeOf(pub.Broker))
	require.NoError(t, cluster.Start(ctx, 1))

	check := func(what string) {
		t.Helper()
		r, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3))
		require.NoError(t, err, what)
		v, err := r.Get(ctx)
		require.NoError(t, err, what)
		require.Equal(t, int64(5), v, what)
		ctrl, err := c.Control(ctx)
		require.NoError(t, err, what)
		require.Eventually(t, func() bool {
			replies, err := ctrl.Ping(ctx, revoke.Destination(w.Hostname), revoke.Wait(2*time.Second))
			return err == nil && len(replies) == 1
		}, 30*time.Second, 100*time.Millisecond, "%s: the worker answers a ping", what)
		require.Eventually(t, func() bool {
			tk, ok := c.Events().Task(r.ID())
			return ok && tk.State == result.Success && tk.Worker == w.Hostname
		}, 30*time.Second, 20*time.Millisecond, "%s: the task's events arrive", what)
	}
	check("on node 2")

	killed := time.Now()
	require.NoError(t, cluster.Kill(2))
	recovery, node := waitReadyOff(t, c, 2, killed)
	t.Logf("kill -9 of node 2: client Ready on node %d after %s", node, recovery.Round(time.Millisecond))
	check("after node 2 died")
}
