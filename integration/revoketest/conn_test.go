package revoketest

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/revoke"
)

// The reply queue is declared and consumed again after the connection
// drops: replies keep arriving once the Controller has redialled.
func TestRevokeReconnect(t *testing.T) {
	a, b := workers(t)
	name := harness.Name("revoke-reconnect")
	ctx := harness.Ctx(t, 60*time.Second)
	c, err := revoke.Dial(ctx, harness.BrokerURL(), revoke.WithConnectionName(name), revoke.WithLogger(testLogger(t)))
	require.NoError(t, err)
	defer c.Close()

	both := revoke.Destination(a.Hostname, b.Hostname)
	_, err = c.Ping(ctx, both)
	require.NoError(t, err)

	for round := range 2 {
		harness.CloseConnection(t, name)
		require.Eventually(t, func() bool {
			replies, err := c.Ping(ctx, both, revoke.Wait(time.Second))
			if err != nil {
				t.Logf("round %d: ping after the drop: %v", round, err)
				return false
			}
			return len(replies) == 2
		}, 30*time.Second, 100*time.Millisecond)
	}
	replies, err := c.Revoke(ctx, []string{uuid.NewString()}, both, revoke.Wait(2*time.Second))
	require.NoError(t, err)
	assert.Len(t, replies, 2)
}

// Close leaves no goroutine behind: neither ours nor the connection's.
func TestRevokeCloseLeavesNoGoroutines(t *testing.T) {
	a, _ := workers(t)
	ignore := goleak.IgnoreCurrent()
	ctx := harness.Ctx(t, 30*time.Second)
	c, err := revoke.Dial(ctx, harness.BrokerURL(), revoke.WithConnectionName(harness.Name("revoke-leak")))
	require.NoError(t, err)
	_, err = c.Ping(ctx, revoke.Destination(a.Hostname))
	require.NoError(t, err)
	_, err = c.Revoke(ctx, []string{uuid.NewString()})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	goleak.VerifyNone(t, ignore)
}
