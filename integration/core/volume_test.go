package core

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// TestSendVolume sends 2,000 tasks to the real Celery worker with 64 in
// flight and checks every value. It logs the rate it saw; the rate is a
// measurement, not an assertion (the benchmark is integration/bench).
func TestSendVolume(t *testing.T) {
	const n, window = 2000, 64
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 120*time.Second)
		sem := make(chan struct{}, window)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		start := time.Now()
		for i := 0; i < n; i++ {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				r, err := c.Send(ctx, "tasks.add", amqp.Args(i, i))
				if err != nil {
					errs <- err
					return
				}
				v, err := result.GetAs[int](ctx, r)
				if err != nil {
					errs <- err
					return
				}
				if v != 2*i {
					errs <- fmt.Errorf("tasks.add(%d, %d) = %d, want %d", i, i, v, 2*i)
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		st := c.Stats()
		assert.Zero(t, st.Pending)
		assert.Zero(t, st.Malformed)
		t.Logf("%s: %d tasks through a Celery 5.2.6 worker (prefork, 4 processes) in %s: %.0f tasks/s, %d channels",
			c.ReplyMode(), n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), st.Channels)
	})
}
