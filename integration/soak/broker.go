package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/integration/harness"
)

// ctlFunc runs rabbitmqctl with args against a node that is up and
// returns its standard output.
type ctlFunc func(ctx context.Context, args ...string) (string, error)

// environment is what the soak runs against: the default node, or a
// cluster.
type environment struct {
	prefix    string // stalk-soak-<random>: every name the run creates starts with it
	cluster   *clusterEnv
	ctl       ctlFunc
	workerURL string
	clientURL string // Celery's ;-separated list on a cluster
}

func localCtl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "rabbitmqctl", args...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// connPid returns the Erlang pid of the connection named name, or "" when
// the broker lists none.
func connPid(ctx context.Context, ctl ctlFunc, name string) (string, error) {
	out, err := ctl(ctx, "-s", "list_connections", "pid", "client_properties")
	if err != nil {
		return "", err
	}
	// RabbitMQ 3.10 has no user_provided_name column: the name is in
	// client_properties, rendered {"connection_name","x"}.
	want := `{"connection_name","` + name + `"}`
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, want) {
			pid, _, _ := strings.Cut(strings.TrimSpace(line), "\t")
			return pid, nil
		}
	}
	return "", nil
}

// findConn waits until the broker lists the connection named name and
// returns its pid.
func findConn(ctx context.Context, ctl ctlFunc, name string) (string, error) {
	for {
		p, err := connPid(ctx, ctl, name)
		if err != nil {
			return "", err
		}
		if p != "" {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("connection %q is not listed: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// queuesWithPrefix lists the queues whose name starts with prefix.
func queuesWithPrefix(ctx context.Context, ctl ctlFunc, prefix string) ([]string, error) {
	out, err := ctl(ctx, "-s", "list_queues", "name")
	if err != nil {
		return nil, err
	}
	var qs []string
	for _, line := range strings.Split(out, "\n") {
		if q := strings.TrimSpace(line); strings.HasPrefix(q, prefix) {
			qs = append(qs, q)
		}
	}
	return qs, nil
}

// deleteQueues deletes queues (and the direct exchange of the same name
// that stalk declares with a task queue) over a plain connection.
func deleteQueues(u string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	conn, err := dialPlain(u, "cleanup")
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	var errs []error
	for _, q := range names {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", q, err))
			if ch, err = conn.Channel(); err != nil {
				return errors.Join(append(errs, err)...)
			}
		}
		_ = ch.ExchangeDelete(q, true, false)
	}
	return errors.Join(errs...)
}

func dialPlain(u, name string) (*amqp091.Connection, error) {
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName(name)
	return amqp091.DialConfig(u, amqp091.Config{
		Heartbeat: 10 * time.Second, Locale: "en_US", Properties: props,
		Dial: amqp091.DefaultDial(10 * time.Second),
	})
}

// protectedNode is the cluster node that stays up: the echo worker and the
// task queue are on it.
const protectedNode = 1

// clusterEnv is a running test cluster and what the soak knows of it.
type clusterEnv struct {
	c *harness.Cluster
}

func startCluster(ctx context.Context) (*clusterEnv, error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := harness.StartCluster(sctx)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	logf("cluster: 3 nodes running in %s (%s)", c.StartupTime().Round(100*time.Millisecond), c.Dir())
	return &clusterEnv{c: c}, nil
}

// ctl runs rabbitmqctl on the protected node, which is always up.
func (e *clusterEnv) ctl(ctx context.Context, args ...string) (string, error) {
	return e.c.Ctl(ctx, protectedNode, args...)
}

// clientURL is the client's broker list: the nodes that may fail first, the
// protected node last, so that the client is mostly on a node that faults
// can reach.
func (e *clusterEnv) clientURL() string {
	return strings.Join([]string{e.c.URL(2), e.c.URL(3), e.c.URL(1)}, ";")
}

// saveLogs copies the nodes' log folders to dst, for a failed run: the
// cluster's own folder goes with the cluster.
func (e *clusterEnv) saveLogs(dst string) error {
	var errs []error
	for i := 1; i <= 3; i++ {
		src := filepath.Join(e.c.Dir(), "n"+strconv.Itoa(i), "log")
		files, _ := os.ReadDir(src)
		to := filepath.Join(dst, "n"+strconv.Itoa(i))
		if err := os.MkdirAll(to, 0o755); err != nil {
			return err
		}
		for _, f := range files {
			if f.IsDir() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(src, f.Name()))
			if err == nil {
				err = os.WriteFile(filepath.Join(to, f.Name()), b, 0o644)
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// runningNodes is cluster_status's running nodes as "1,2,3", or "?".
func (e *clusterEnv) runningNodes(ctx context.Context) string {
	ns, err := e.c.RunningNodes(ctx)
	if err != nil {
		return "?"
	}
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ",")
}

// nodeOf maps a connection's broker URL (Client.Status, redacted) to the
// cluster node by its port: 568<i> is node i. It returns 0 when it cannot.
func nodeOf(broker string) int {
	u, err := url.Parse(broker)
	if err != nil {
		return 0
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil || p < 5681 || p > 5683 {
		return 0
	}
	return p - 5680
}
