package revoketest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/revoke"
)

// closeConnection closes our own named connection from the broker side,
// as a network fault would. Only that connection is touched.
func closeConnection(t *testing.T, name string) {
	t.Helper()
	var pid string
	require.Eventually(t, func() bool {
		// RabbitMQ 3.10 has no user_provided_name column: look for the
		// name in client_properties, rendered {"connection_name","x"}.
		out, err := harness.Rabbitmqctl("-q", "list_connections", "--no-table-headers", "pid", "client_properties")
		if err != nil {
			return false
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, `{"connection_name","`+name+`"}`) {
				pid, _, _ = strings.Cut(line, "\t")
				return true
			}
		}
		return false
	}, 15*time.Second, 200*time.Millisecond, "connection %q not listed", name)
	out, err := harness.Rabbitmqctl("close_connection", pid, "stalk revoketest fault")
	require.NoError(t, err, "%s", out)
}

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
		closeConnection(t, name)
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

// NewController uses a connection the caller owns: closing the Controller
// leaves it open, and another Controller can use it.
func TestRevokeSharedConnection(t *testing.T) {
	a, b := workers(t)
	ctx := harness.Ctx(t, 30*time.Second)
	conn, err := broker.Dial(ctx, broker.Config{URL: harness.BrokerURL(), Name: harness.Name("revoke-shared")})
	require.NoError(t, err)
	defer conn.Close()

	both := revoke.Destination(a.Hostname, b.Hostname)
	c1 := revoke.NewController(conn, zerolog.Nop())
	_, err = c1.Ping(ctx, both)
	require.NoError(t, err)
	require.NoError(t, c1.Close())
	assert.Equal(t, broker.Ready, conn.State(), "Close leaves a caller's connection open")
	_, err = c1.Ping(ctx, both)
	assert.ErrorIs(t, err, revoke.ErrClosed)

	c2 := revoke.NewController(conn, zerolog.Nop())
	defer c2.Close()
	replies, err := c2.Ping(ctx, both)
	require.NoError(t, err)
	assert.Len(t, replies, 2)

	// Closing the connection ends the Controller's commands too.
	require.NoError(t, conn.Close())
	_, err = c2.Ping(ctx, both)
	assert.True(t, errors.Is(err, revoke.ErrClosed), "%v", err)
	require.NoError(t, c2.Close())
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
