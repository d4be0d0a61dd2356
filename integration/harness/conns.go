package harness

import (
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var pidRE = regexp.MustCompile(`^<[^>]+>`)

// ConnPids returns the Erlang pids of the broker connections whose
// connection_name is one of names.
func ConnPids(t testing.TB, names ...string) []string {
	t.Helper()
	out, err := Rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "client_properties")
	require.NoError(t, err, "list_connections: %s", out)
	var pids []string
	for _, line := range strings.Split(out, "\n") {
		for _, name := range names {
			if !strings.Contains(line, `"`+name+`"`) {
				continue
			}
			if p := pidRE.FindString(strings.TrimSpace(line)); p != "" {
				pids = append(pids, p)
			}
		}
	}
	return pids
}

// CloseConns closes, broker side and at the same time, the connections
// named names. It returns how many it closed.
func CloseConns(t testing.TB, names ...string) int {
	t.Helper()
	pids := ConnPids(t, names...)
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for _, pid := range pids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := Rabbitmqctl("close_connection", pid, "stalk fault test")
			if err != nil {
				t.Logf("close_connection %s: %v: %s", pid, err, out)
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return n
}

// CloseConnection closes our own named connection from the broker side,
// as a network fault would, waiting up to 15 s for it to be listed. Only
// that connection is touched, so suites that take the broker lock shared
// may use it.
func CloseConnection(t *testing.T, name string) {
	t.Helper()
	var pid string
	require.Eventually(t, func() bool {
		// RabbitMQ 3.10 has no user_provided_name column: look for the
		// name in client_properties, rendered {"connection_name","x"}.
		out, err := Rabbitmqctl("-q", "list_connections", "--no-table-headers", "pid", "client_properties")
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
	out, err := Rabbitmqctl("close_connection", pid, "stalk test fault")
	require.NoError(t, err, "%s", out)
}
