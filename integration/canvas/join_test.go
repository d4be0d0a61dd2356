package canvas

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/echoworker"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// countingBackend is the client's backend, with every call the result set
// makes to it counted: a join that polled would show up as Exists calls or
// as more than one Attach per member.
type countingBackend struct {
	result.Backend
	attaches, exists atomic.Int64
}

func (b *countingBackend) Attach(id string) *result.Entry {
	b.attaches.Add(1)
	return b.Backend.Attach(id)
}

func (b *countingBackend) Exists(ctx context.Context, id string) (bool, error) {
	b.exists.Add(1)
	return b.Backend.Exists(ctx, id)
}

// Joining 10,000 results (2,000 in per-task mode, where each is its own
// queue) is event-driven: one Attach per member, no polling, and in shared
// mode one consumer on one reply queue and no goroutine per member. The
// tasks wait in their queue until the join has started; then a Go echo
// worker answers them, so that the test measures the join, not Celery.
func TestCanvasJoinTenThousand(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		n := 10_000
		if c.ReplyMode() == amqp.PerTask {
			n = 2_000
		}
		ctx := harness.Ctx(t, 3*time.Minute)
		q := harness.Name("join", c.ReplyMode().String())
		t.Cleanup(func() { harness.DeleteQueue(t, q) })

		ids := make([]string, n)
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					r, err := c.Send(ctx, "tasks.echo", amqp.Args(i), amqp.Queue(q))
					if err != nil {
						errs <- err
						return
					}
					ids[i] = r.ID()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		b := &countingBackend{Backend: c.AsyncResult("backend").Backend()}
		members := make([]*result.AsyncResult, n)
		for i, id := range ids {
			members[i] = result.New(id, b)
		}
		set := result.NewResultSet(members...)
		baseline := runtime.NumGoroutine()
		var peak atomic.Int64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				if g := int64(runtime.NumGoroutine()); g > peak.Load() {
					peak.Store(g)
				}
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
			}
		}()
		// The worker starts once the join is waiting, so that every
		// result arrives during the join.
		joined := make(chan struct{})
		go func() {
			defer close(joined)
			time.Sleep(100 * time.Millisecond)
			w, err := echoworker.Start(ctx, echoworker.Config{URL: harness.BrokerURL(), Queue: q, Channels: 2})
			if err != nil {
				t.Errorf("echo worker: %v", err)
				return
			}
			t.Cleanup(w.Stop)
		}()
		start := time.Now()
		vals, err := set.Join(ctx)
		took := time.Since(start)
		<-joined
		close(stop)
		<-sampled
		require.NoError(t, err)
		require.Len(t, vals, n)
		for i, v := range vals {
			if v != int64(i) {
				t.Fatalf("member %d = %v", i, v)
			}
		}
		assert.Equal(t, int64(n), b.attaches.Load(), "one Attach per member")
		assert.Zero(t, b.exists.Load(), "no polling")
		t.Logf("%s: joined %d results in %s; goroutines %d before the join, peak %d during it",
			c.ReplyMode(), n, took.Round(time.Millisecond), baseline, peak.Load())
		if c.ReplyMode() == amqp.Shared {
			// Each settle hands its callbacks to a short-lived goroutine
			// (callbacks never run on the consumer loop), and the echo
			// worker runs in this process; nothing lives per member.
			assert.Less(t, peak.Load()-int64(baseline), int64(n/10), "no goroutine per member")
			reply, ok := harness.InspectQueue(t, c.ReplyQueue(""))
			require.True(t, ok)
			assert.Equal(t, 1, reply.Consumers, "one consumer on the shared reply queue")
		}
	})
}
