package fault

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// stateLog records the state changes of a client's two connections.
type stateLog struct {
	mu     sync.Mutex
	state  [2]amqp.ConnState // results, publish
	downAt [2]time.Time
	ups    [2][]time.Duration // Reconnecting -> Ready, per connection and outage
}

func watchStates(c *amqp.Client) *stateLog {
	l := &stateLog{state: [2]amqp.ConnState{amqp.Ready, amqp.Ready}}
	c.OnStateChange(func(publishing bool, s amqp.ConnState) {
		i := 0
		if publishing {
			i = 1
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.state[i] = s
		switch s {
		case amqp.Reconnecting:
			l.downAt[i] = time.Now()
		case amqp.Ready:
			if !l.downAt[i].IsZero() {
				l.ups[i] = append(l.ups[i], time.Since(l.downAt[i]))
				l.downAt[i] = time.Time{}
			}
		}
	})
	return l
}

func (l *stateLog) bothReady() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state[0] == amqp.Ready && l.state[1] == amqp.Ready
}

// recoveries returns the outage times of the results connection (which
// re-consumes every pending reply queue before it is Ready) or of the
// publish connection, sorted.
func (l *stateLog) recoveries(publishing bool) []time.Duration {
	i := 0
	if publishing {
		i = 1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]time.Duration(nil), l.ups[i]...)
	sort.Slice(out, func(a, b int) bool { return out[a] < out[b] })
	return out
}

// TestFaultConnectionKill closes the client's connections, broker side, 5
// times under a steady load of 2,000 tasks in flight, and at least 2,000
// tasks in all. Every promise settles exactly once with the right value.
func TestFaultConnectionKill(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			// The senders keep `window` tasks in flight until every kill
			// is done and at least n tasks went out, so each kill lands
			// with results pending however long rabbitmqctl takes to
			// close a connection (seconds, under load).
			const n, window, kills, maxTasks = 2000, 2000, 5, 30000
			name := harness.Name("kill", mode.String())
			c := dial(t, name, amqp.WithReplyMode(mode), amqp.WithResultExpires(2*time.Minute))
			states := watchStates(c)
			ctx := harness.Ctx(t, 3*time.Minute)
			// Results pending at the moment the results connection is
			// lost: rabbitmqctl can take seconds to close it, so the count
			// taken before the close is not the one that matters.
			var lossMu sync.Mutex
			var pendingAtLoss []int
			c.OnStateChange(func(publishing bool, s amqp.ConnState) {
				if !publishing && s == amqp.Reconnecting {
					p := c.Stats().Pending
					lossMu.Lock()
					pendingAtLoss = append(pendingAtLoss, p)
					lossMu.Unlock()
				}
			})

			type slot struct {
				r       *result.AsyncResult
				settled atomic.Int32
				sendErr error
			}
			slots := make([]slot, maxTasks)
			var sent, settled atomic.Int64
			var issued int // tasks handed to the senders; read after they finish
			var killsOver atomic.Bool
			begin := time.Now()

			// Senders: as fast as the client goes, up to the window. The
			// worker is the bottleneck (4 processes, 30 ms a task).
			next := make(chan int)
			go func() {
				defer close(next)
				for i := 0; i < maxTasks; i++ {
					if i >= n && killsOver.Load() {
						return
					}
					for int64(i)-settled.Load() >= window {
						if ctx.Err() != nil {
							return
						}
						time.Sleep(5 * time.Millisecond)
					}
					select {
					case next <- i:
						issued = i + 1
					case <-ctx.Done():
						return
					}
				}
			}()
			var wg sync.WaitGroup
			for range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range next {
						r, err := c.Send(ctx, "tasks.slow", amqp.Args(want(i)))
						if err != nil {
							slots[i].sendErr = err
							continue
						}
						slots[i].r = r
						sent.Add(1)
						r.Then(func(any) {
							slots[i].settled.Add(1)
							settled.Add(1)
						}, func(error) {
							slots[i].settled.Add(1)
							settled.Add(1)
						})
					}
				}()
			}

			// Killer: each kill comes once both connections are up again
			// and n/(kills+1) more tasks have settled since the last one.
			type kill struct {
				at      time.Time
				pending int
				sent    int64
				settled int64
				closed  int
			}
			var killsDone []kill
			killerDone := make(chan struct{})
			go func() {
				defer close(killerDone)
				defer killsOver.Store(true)
				threshold := int64(n / (2 * (kills + 1)))
				for k := 0; k < kills; k++ {
					for !states.bothReady() || settled.Load() < threshold {
						if ctx.Err() != nil {
							return
						}
						time.Sleep(10 * time.Millisecond)
					}
					threshold = settled.Load() + n/(kills+1)
					kd := kill{at: time.Now(), pending: c.Stats().Pending, sent: sent.Load(), settled: settled.Load()}
					kd.closed = harness.CloseConns(t, name+"-results", name+"-publish")
					killsDone = append(killsDone, kd)
				}
			}()
			wg.Wait()
			<-killerDone

			// Every result, with the right value.
			start := time.Now()
			var lost, wrong []int
			require.GreaterOrEqual(t, issued, n)
			used := slots[:issued]
			for i := range used {
				require.NoError(t, used[i].sendErr, "send %d", i)
				v, err := used[i].r.Get(ctx)
				if err != nil {
					lost = append(lost, i)
					t.Logf("task %d (%s): %v", i, used[i].r.ID(), err)
					continue
				}
				if v != want(i) {
					wrong = append(wrong, i)
				}
			}
			// Callbacks run off the consumer; give the last ones a moment,
			// then make sure nothing settles twice.
			require.Eventually(t, func() bool { return settled.Load() >= sent.Load() }, 10*time.Second, 10*time.Millisecond)
			time.Sleep(200 * time.Millisecond)
			twice := 0
			for i := range used {
				if used[i].settled.Load() != 1 {
					twice++
				}
			}
			st := c.Stats()
			rec := states.recoveries(false)
			pubRec := states.recoveries(true)
			t.Logf("%s: %d tasks, %d kills, lost %d, wrong %d, settled≠1 %d; drained in %s after the last send; stats %+v",
				mode, issued, len(killsDone), len(lost), len(wrong), twice, time.Since(start).Round(time.Millisecond), st)
			for i, k := range killsDone {
				t.Logf("kill %d at +%s: %d pending (sent %d, settled %d), %d connections closed",
					i+1, k.at.Sub(begin).Round(time.Millisecond), k.pending, k.sent, k.settled, k.closed)
			}
			lossMu.Lock()
			atLoss := slices.Clone(pendingAtLoss)
			lossMu.Unlock()
			t.Logf("pending when the results connection was lost: %v", atLoss)
			t.Logf("recovery times, results connection (lost -> re-consumed -> Ready): %v", rec)
			t.Logf("recovery times, publish connection (lost -> Ready): %v", pubRec)
			harness.Measured("TestFaultConnectionKill/%s: %d tasks, %d kills (pending when lost: %v); lost %d, wrong %d, settled≠1 %d; "+
				"results connection recovery (lost → re-consumed → Ready) min %v, median %v, max %v over %d outages; "+
				"publish connection median %v, max %v; reconnects %d, duplicates %d",
				mode, issued, len(killsDone), atLoss, len(lost), len(wrong), twice,
				pct(rec, 0), pct(rec, 50), pct(rec, 100), len(rec), pct(pubRec, 50), pct(pubRec, 100), st.Reconnects, st.Duplicates)
			assert.Empty(t, lost, "lost")
			assert.Empty(t, wrong, "wrong")
			assert.Zero(t, twice, "settled other than once")
			require.Len(t, killsDone, kills)
			for i, k := range killsDone {
				assert.Equal(t, 2, k.closed, "kill %d closed both connections", i+1)
			}
			require.Len(t, atLoss, kills, "one loss of the results connection per kill")
			for i, p := range atLoss {
				assert.Positive(t, p, "loss %d happened with results pending", i+1)
			}
			assert.GreaterOrEqual(t, st.Reconnects, int64(kills))
			assert.Zero(t, st.Pending)
		})
	}
}

// want is task i's argument to tasks.slow, which returns it: about 30 ms of
// sleep, distinct for every i, so that a swapped result shows.
func want(i int) float64 { return 0.03 + float64(i)/1e7 }

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := (len(d) - 1) * p / 100
	return d[i].Round(time.Millisecond)
}

// TestFaultBrokerRestart restarts the broker app while results sit in the
// reply queues and tasks are running. Persistent results all arrive;
// transient ones that were sitting in a queue are lost with the restart,
// and their waits end at ctx with ErrResultLost and ErrTimeout.
//
// To make "results sitting in a queue" deterministic, the client talks to
// the broker through a proxy that the test cuts first (a partition): the
// worker's results pile up in the reply queues while nobody consumes them,
// then the app is stopped and started, then the proxy heals.
func TestFaultBrokerRestart(t *testing.T) {
	for _, persistent := range []bool{true, false} {
		for _, mode := range modes {
			kind := "transient"
			queue, slowQ := transientQ, transientSlowQ
			if persistent {
				kind, queue, slowQ = "persistent", persistQ, persistSlowQ
			}
			t.Run(kind+"/"+mode.String(), func(t *testing.T) {
				restartGuard(t)
				const n = 50
				px := startProxy(t, nil)
				name := harness.Name("restart", kind, mode.String())
				c := dialURL(t, px.URL("amqp"), name, amqp.WithReplyMode(mode), amqp.WithDefaultQueue(queue),
					amqp.WithBackoff(func(int) time.Duration { return 200 * time.Millisecond }))
				ctx := harness.Ctx(t, 2*time.Minute)

				// The workers reconnect on their own after the previous
				// restart; wait until both answer.
				for _, q := range []string{queue, slowQ} {
					r, err := c.Send(ctx, "tasks.add", amqp.Args(0, 0), amqp.Queue(q))
					require.NoError(t, err)
					wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
					_, err = r.Get(wctx)
					cancel()
					require.NoError(t, err, "worker on %s", q)
				}
				// A countdown makes the tasks run, and their results arrive,
				// after the partition.
				rs := make([]*result.AsyncResult, n)
				for i := range rs {
					r, err := c.Send(ctx, "tasks.add", amqp.Args(i, 100), amqp.Countdown(3*time.Second))
					require.NoError(t, err)
					rs[i] = r
				}
				// Tasks still running when the broker goes down: the worker
				// publishes their results once it is back (Celery retries
				// result publishes), persistent or not. They too start after
				// the partition, so that their STARTED is in the queue.
				var running []*result.AsyncResult
				const runFor = 10 // seconds: well past stop_app
				sentAt := time.Now()
				for range 2 {
					r, err := c.Send(ctx, "tasks.slow", amqp.Args(runFor), amqp.Queue(slowQ), amqp.Countdown(3*time.Second))
					require.NoError(t, err)
					running = append(running, r)
				}
				px.cut()
				want := 2 * n // STARTED and SUCCESS
				if mode == amqp.Shared {
					want += len(running) // their STARTED
				}
				waitQueued(t, c, rs, want)

				require.Less(t, time.Since(sentAt), runFor*time.Second, "the slow tasks must still be running at stop_app")
				out, err := harness.Rabbitmqctl("stop_app")
				require.NoError(t, err, out)
				stopped := time.Now()
				px.heal()
				// Publishing while the broker is down waits; with a short
				// ctx it ends with a clear error.
				short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				_, err = c.Send(short, "tasks.add", amqp.Args(1, 1))
				cancel()
				require.Error(t, err)
				assert.ErrorIs(t, err, context.DeadlineExceeded)
				assert.Contains(t, err.Error(), "waiting for the broker")
				t.Logf("Send while the broker is down: %v", err)
				// A wait that ends while the broker is still down says the
				// result may have been lost.
				short, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
				_, err = rs[0].Get(short)
				cancel()
				assert.ErrorIs(t, err, result.ErrResultLost, "wait during the outage")
				assert.ErrorIs(t, err, result.ErrTimeout, "wait during the outage")
				t.Logf("Get while the broker is down: %v", err)
				// A Send with a longer ctx waits for the broker and succeeds.
				during := make(chan error, 1)
				var duringR *result.AsyncResult
				go func() {
					r, err := c.Send(ctx, "tasks.add", amqp.Args(20, 22))
					duringR = r
					during <- err
				}()
				time.Sleep(300 * time.Millisecond)
				out, err = harness.Rabbitmqctl("start_app")
				require.NoError(t, err, out)
				require.NoError(t, brokerUp(60*time.Second))
				t.Logf("broker app down for %s", time.Since(stopped).Round(time.Millisecond))
				require.NoError(t, <-during, "Send during the outage")
				require.Eventually(t, func() bool { return c.State() == amqp.Ready }, 30*time.Second, 20*time.Millisecond)
				back := time.Now()

				if persistent {
					for i, r := range rs {
						wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
						v, err := r.Get(wctx)
						cancel()
						require.NoError(t, err, "task %d", i)
						assert.Equal(t, int64(i+100), v)
					}
					t.Logf("%d persistent results delivered %s after the broker came back", n, time.Since(back).Round(time.Millisecond))
				} else {
					wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
					for i, r := range rs {
						_, err := r.Get(wctx)
						require.Error(t, err, "task %d: a transient result came through a restart", i)
						assert.ErrorIs(t, err, result.ErrResultLost, "task %d", i)
						assert.ErrorIs(t, err, result.ErrTimeout, "task %d", i)
						assert.ErrorIs(t, err, context.DeadlineExceeded, "task %d", i)
						if i == 0 {
							t.Logf("transient result lost: %v", err)
						}
					}
					cancel()
				}
				for _, r := range running {
					wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
					v, err := r.Get(wctx)
					cancel()
					require.NoError(t, err, "task running through the restart")
					assert.Equal(t, int64(runFor), v)
				}
				// The task sent during the outage, and a new one, complete.
				wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				defer cancel()
				v, err := duringR.Get(wctx)
				require.NoError(t, err, "task sent during the outage")
				assert.Equal(t, int64(42), v)
				r, err := c.Send(wctx, "tasks.add", amqp.Args(2, 2))
				require.NoError(t, err)
				v, err = r.Get(wctx)
				require.NoError(t, err, "task sent after the restart")
				assert.Equal(t, int64(4), v)
			})
		}
	}
}

// waitQueued waits until n result messages sit in the reply queues of rs
// (their per-task queues, or the shared one).
func waitQueued(t *testing.T, c *amqp.Client, rs []*result.AsyncResult, n int) {
	t.Helper()
	conn := rawConn(t)
	count := func() int {
		total := 0
		seen := map[string]bool{}
		for _, r := range rs {
			q := c.ReplyQueue(r.ID())
			if seen[q] {
				continue
			}
			seen[q] = true
			ch, err := conn.Channel()
			if err != nil {
				return -1
			}
			qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			_ = ch.Close()
			if err == nil {
				total += qi.Messages
			}
		}
		return total
	}
	require.Eventually(t, func() bool { return count() >= n }, 30*time.Second, 100*time.Millisecond,
		"results did not reach the reply queues")
}

// TestFaultSendDuringOutage: while the broker cannot be reached (a
// partition, through a proxy the test cuts), Send waits and succeeds once it
// is back, or ends with a clear error at its ctx.
func TestFaultSendDuringOutage(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			px := startProxy(t, nil)
			c := dialURL(t, px.URL("amqp"), harness.Name("outage", mode.String()), amqp.WithReplyMode(mode),
				amqp.WithBackoff(func(int) time.Duration { return 100 * time.Millisecond }))
			ctx := harness.Ctx(t, time.Minute)
			px.cut()
			require.Eventually(t, func() bool { return c.State() != amqp.Ready }, 10*time.Second, 5*time.Millisecond)

			short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err := c.Send(short, "tasks.add", amqp.Args(1, 2))
			cancel()
			require.Error(t, err)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Contains(t, err.Error(), "waiting for the broker")
			t.Logf("Send with a short ctx during the outage: %v", err)
			assert.Zero(t, c.Stats().Pending, "nothing stays registered for a failed Send")

			time.AfterFunc(time.Second, px.heal)
			start := time.Now()
			r, err := c.Send(ctx, "tasks.add", amqp.Args(3, 4))
			require.NoError(t, err)
			t.Logf("Send waited %s for the broker", time.Since(start).Round(time.Millisecond))
			assert.Greater(t, time.Since(start), 900*time.Millisecond)
			v, err := r.Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, int64(7), v)
		})
	}
}

// sendUnderAlarm sends a task with a ctx of d while a broker resource alarm
// blocks publishing: Send must fail at that ctx, not hang past it by more
// than 3 s, with an error that names the alarm.
func sendUnderAlarm(t *testing.T, ctx context.Context, c *amqp.Client, d time.Duration, what string) {
	t.Helper()
	short, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	_, err := c.Send(short, "tasks.add", amqp.Args(2, 2))
	took := time.Since(start)
	require.Error(t, err, what)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "resource alarm", "the error names the alarm")
	assert.Less(t, took, d+3*time.Second, "no hang past ctx")
	t.Logf("%s: %v after %s", what, err, took.Round(time.Millisecond))
}

// TestFaultMemoryAlarm raises a broker memory alarm: Send waits, and ends
// with an error at its ctx, never hangs; once the alarm clears, sending
// works again.
func TestFaultMemoryAlarm(t *testing.T) {
	c := dial(t, harness.Name("alarm"))
	ctx := harness.Ctx(t, time.Minute)
	// Warm up: the task queue is declared and the channel is used.
	r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 1))
	require.NoError(t, err)
	_, err = r.Get(ctx)
	require.NoError(t, err)

	restore := func() {
		if out, err := harness.Rabbitmqctl("set_vm_memory_high_watermark", "0.4"); err != nil {
			t.Errorf("restore watermark: %v: %s", err, out)
		}
	}
	t.Cleanup(restore)
	out, err := harness.Rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
	require.NoError(t, err, out)

	for i := range 2 {
		sendUnderAlarm(t, ctx, c, 2*time.Second, fmt.Sprintf("send %d under a memory alarm", i))
	}
	assert.Zero(t, c.Stats().Pending, "failed sends leave nothing pending")

	// A Send that is waiting when the alarm clears goes through.
	done := make(chan error, 1)
	var r2 *result.AsyncResult
	go func() {
		var err error
		r2, err = c.Send(ctx, "tasks.add", amqp.Args(5, 5))
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	restore()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("Send did not complete after the alarm cleared")
	}
	v, err := r2.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(10), v)
}

// TestFaultDiskAlarm raises a broker disk alarm (a free-disk limit above
// the disk's size): Send ends at its ctx with an error that names the
// alarm, and works again once the alarm clears.
func TestFaultDiskAlarm(t *testing.T) {
	c := dial(t, harness.Name("disk-alarm"))
	ctx := harness.Ctx(t, time.Minute)
	r, err := c.Send(ctx, "tasks.add", amqp.Args(1, 1))
	require.NoError(t, err)
	_, err = r.Get(ctx)
	require.NoError(t, err)

	limit := "50MB" // RabbitMQ's default
	if out, err := harness.Rabbitmqctl("eval", "application:get_env(rabbit, disk_free_limit)."); err == nil {
		if m := regexp.MustCompile(`^\{ok,(\d+)\}`).FindStringSubmatch(strings.TrimSpace(out)); m != nil {
			limit = m[1]
		}
	}
	restore := func() {
		if out, err := harness.Rabbitmqctl("set_disk_free_limit", limit); err != nil {
			t.Errorf("restore disk_free_limit: %v: %s", err, out)
		}
	}
	t.Cleanup(restore)
	out, err := harness.Rabbitmqctl("set_disk_free_limit", "100000GB")
	require.NoError(t, err, out)

	sendUnderAlarm(t, ctx, c, 3*time.Second, "send under a disk alarm")

	restore()
	r, err = c.Send(ctx, "tasks.add", amqp.Args(3, 4))
	require.NoError(t, err)
	v, err := r.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(7), v)
}
