package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A Cluster is a real 3-node RabbitMQ cluster on this machine, beside the
// default node (rabbit@localhost on 5672), which it never touches.
//
// Node i (1, 2 or 3) is stalkc<i>@localhost, takes AMQP on 127.0.0.1:568<i>
// and Erlang distribution on 127.0.0.1:2568<i>. The names and ports are
// fixed so that a node left behind by a crashed run can be found, and
// stopped, by the next StartCluster. Each node has its own config, mnesia,
// log and pid file under a folder /tmp/stalkc-*, and the three share a
// HOME there holding their own Erlang cookie. The server's own scripts
// are called (not Debian's /usr/sbin wrappers, which would switch to the
// rabbitmq user and so to the default node's HOME and cookie), and the
// default node's /etc/rabbitmq files are not read.
//
// One cluster runs on the machine at a time: StartCluster holds the
// exclusive lock /tmp/stalk-cluster.lock until Close.
//
// A Cluster's methods may be called from several goroutines. Methods that
// take i panic if i is not 1, 2 or 3.
type Cluster struct {
	dir     string // the cluster's own folder
	sbin    string // the server's scripts
	lock    *os.File
	startup time.Duration

	mu   sync.Mutex
	down [clusterNodes + 1]bool // stopped or killed through Stop or Kill, not started since

	closeOnce sync.Once
	closeErr  error
}

const (
	clusterNodes    = 3
	clusterLockPath = "/tmp/stalk-cluster.lock"
	clusterDirGlob  = "/tmp/stalkc-*"
	amqpPortBase    = 5680  // node i takes AMQP on amqpPortBase+i
	distPortBase    = 25680 // and Erlang distribution on distPortBase+i
)

// ServerSbin returns the RabbitMQ server's own script folder,
// /usr/lib/rabbitmq/lib/rabbitmq_server-<version>/sbin.
func ServerSbin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin")
	slices.Sort(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "rabbitmq-server")); err == nil {
			return dirs[i], nil
		}
	}
	return "", errors.New("no RabbitMQ server scripts in /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin (install Debian's rabbitmq-server)")
}

// StartCluster starts three nodes in parallel, joins nodes 2 and 3 to node
// 1, and returns once cluster_status reports three running nodes and each
// node accepts an AMQP connection as guest/guest. That takes 15-27 s on
// a 2-core machine, depending on its load.
//
// Before starting it takes the cluster lock, waiting for another test
// binary's cluster if need be, and stops whatever is left of a crashed
// run: processes of nodes named stalkc1..3@localhost and /tmp/stalkc-*
// folders.
//
// ctx bounds all of that, the wait for the lock included. If StartCluster
// fails it leaves nothing running. Close the cluster when done.
func StartCluster(ctx context.Context) (*Cluster, error) {
	sbin, err := ServerSbin()
	if err != nil {
		return nil, err
	}
	lock, err := lockFileExclusive(ctx, clusterLockPath)
	if err != nil {
		return nil, fmt.Errorf("cluster lock %s: %w", clusterLockPath, err)
	}
	begin := time.Now()
	if err := cleanClusterLeftovers(); err != nil {
		unlockFile(lock)
		return nil, fmt.Errorf("leftovers of an earlier cluster: %w", err)
	}
	if err := clusterPortsFree(); err != nil {
		unlockFile(lock)
		return nil, err
	}
	dir, err := os.MkdirTemp("/tmp", "stalkc-")
	if err != nil {
		unlockFile(lock)
		return nil, err
	}
	c := &Cluster{dir: dir, sbin: sbin, lock: lock}
	if err := c.start(ctx); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	c.startup = time.Since(begin)
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	if err := c.layout(); err != nil {
		return err
	}
	err := c.each(func(i int) error { return c.boot(ctx, i) })
	if err != nil {
		return err
	}
	err = c.each(func(i int) error {
		if i == 1 {
			return nil
		}
		return c.join(ctx, i)
	})
	if err != nil {
		return err
	}
	return c.each(func(i int) error { return c.awaitJoined(ctx, i) })
}

// join joins node i to node 1: stop_app, reset, join_cluster, start_app,
// as the recipe does. Once (at load 9 on 2 cores, with the reset left out,
// which join_cluster does by itself) start_app after join_cluster failed:
// mnesia did not start, badmatch {error,{normal,{mnesia_app,start,...}}}.
// So a failed sequence is tried again, up to 3 times.
func (c *Cluster) join(ctx context.Context, i int) error {
	var errs []error
	for attempt := 1; attempt <= 3; attempt++ {
		err := func() error {
			for _, args := range [][]string{{"stop_app"}, {"reset"}, {"join_cluster", c.Node(1)}, {"start_app"}} {
				if _, err := c.Ctl(ctx, i, args...); err != nil {
					return err
				}
			}
			return nil
		}()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("join node %d to node 1: %w%s", i, errors.Join(errs...), c.logTail(i))
}

// layout writes the cluster's folder as the recipe in
// shared/reference/rabbitmq-cluster.md does: a cookie in the shared HOME,
// an empty rabbitmq-env.conf, and each node's config, plugin list, mnesia
// and log folders.
func (c *Cluster) layout() error {
	if err := os.MkdirAll(filepath.Join(c.dir, "home"), 0o700); err != nil {
		return err
	}
	cookie := make([]byte, 10)
	_, _ = rand.Read(cookie)
	if err := os.WriteFile(filepath.Join(c.dir, "home", ".erlang.cookie"), []byte(hex.EncodeToString(cookie)), 0o400); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.dir, "rabbitmq-env.conf"), nil, 0o644); err != nil {
		return err
	}
	for i := 1; i <= clusterNodes; i++ {
		d := c.nodeDir(i)
		for _, sub := range []string{"mnesia", "log"} {
			if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(d, "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
			return err
		}
		conf := fmt.Sprintf("listeners.tcp.1 = 127.0.0.1:%d\nloopback_users = none\n", amqpPortBase+i)
		if err := os.WriteFile(filepath.Join(d, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// each runs fn for nodes 1, 2 and 3 in parallel and joins their errors.
func (c *Cluster) each(fn func(i int) error) error {
	errs := make([]error, clusterNodes+1)
	var wg sync.WaitGroup
	for i := 1; i <= clusterNodes; i++ {
		wg.Go(func() { errs[i] = fn(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StartupTime is how long StartCluster took once it had the cluster lock:
// cleaning up after a crashed run, booting, joining and waiting.
func (c *Cluster) StartupTime() time.Duration { return c.startup }

// Dir is the cluster's folder: home/ holds the cookie, n<i>/ node i's
// config, mnesia, log/ and pid file.
func (c *Cluster) Dir() string { return c.dir }

// Node is node i's Erlang name, stalkc<i>@localhost.
func (c *Cluster) Node(i int) string {
	checkClusterNode(i)
	return fmt.Sprintf("stalkc%d@localhost", i)
}

// URL is node i's AMQP URL: amqp://guest:guest@127.0.0.1:568<i>/.
func (c *Cluster) URL(i int) string {
	checkClusterNode(i)
	return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", amqpPortBase+i)
}

// URLs are the three nodes' AMQP URLs, node 1's first.
func (c *Cluster) URLs() []string {
	us := make([]string, 0, clusterNodes)
	for i := 1; i <= clusterNodes; i++ {
		us = append(us, c.URL(i))
	}
	return us
}

// CeleryURL is node i's URL in the form Celery needs for the default
// vhost: amqp://guest:guest@127.0.0.1:568<i>//. Pass it, or URL(i), as
// WorkerConfig.BrokerURL.
func (c *Cluster) CeleryURL(i int) string { return celeryURL(c.URL(i)) }

// Kill kills node i's OS process at once (SIGKILL), which it finds from
// the node's pid file, and waits up to 10 s for it to be gone. It does
// not wait for the other nodes to notice.
func (c *Cluster) Kill(i int) error {
	checkClusterNode(i)
	pid, err := c.pid(i)
	if err != nil {
		return fmt.Errorf("kill node %d: %w", i, err)
	}
	if !procAlive(pid) || !procIsNode(pid, c.Node(i)) {
		return fmt.Errorf("kill node %d: process %d from its pid file is not running", i, pid)
	}
	c.setDown(i, true)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill node %d: %w", i, err)
	}
	if !awaitProcGone(pid, 10*time.Second) {
		return fmt.Errorf("kill node %d: process %d still there 10 s after SIGKILL", i, pid)
	}
	return nil
}

// Stop stops the RabbitMQ application on node i (rabbitmqctl stop_app);
// the Erlang VM goes on running, and Start starts the application again.
// It takes about a second.
func (c *Cluster) Stop(ctx context.Context, i int) error {
	c.setDown(i, true)
	if _, err := c.Ctl(ctx, i, "stop_app"); err != nil {
		return fmt.Errorf("stop node %d: %w", i, err)
	}
	return nil
}

// Start brings node i back after Stop or Kill, and returns once the node
// runs, cluster_status through it shows every node not stopped or killed
// through this Cluster, and it accepts an AMQP connection. After Stop it
// runs start_app (about 2 s); after Kill, or if its process is gone for
// another reason, it boots the server again with the node's environment
// (about 7 s), and the node rejoins by itself. Start on a running node
// only does the waiting.
func (c *Cluster) Start(ctx context.Context, i int) error {
	checkClusterNode(i)
	pid, err := c.pid(i)
	if err != nil || !procAlive(pid) {
		err = c.boot(ctx, i)
	} else {
		_, err = c.Ctl(ctx, i, "start_app")
	}
	if err != nil {
		return fmt.Errorf("start node %d: %w", i, err)
	}
	c.setDown(i, false)
	return c.awaitJoined(ctx, i)
}

// Running reports whether the RabbitMQ application on node i is running
// (rabbitmq-diagnostics check_running). It is false as soon as the
// node's process is gone, and false if ctx ends first.
func (c *Cluster) Running(ctx context.Context, i int) bool {
	checkClusterNode(i)
	if pid, err := c.pid(i); err != nil || !procAlive(pid) {
		return false
	}
	_, err := c.run(ctx, i, "rabbitmq-diagnostics", "-q", "-n", c.Node(i), "check_running")
	return err == nil
}

// RunningNodes returns the nodes that cluster_status reports as running,
// in order, asking the first node not stopped or killed through this
// Cluster.
func (c *Cluster) RunningNodes(ctx context.Context) ([]int, error) {
	out, err := c.Ctl(ctx, c.up(), "cluster_status", "--formatter", "json")
	if err != nil {
		return nil, err
	}
	return parseClusterStatus(out)
}

func parseClusterStatus(out string) ([]int, error) {
	var st struct {
		RunningNodes []string `json:"running_nodes"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("cluster_status: %w: %q", err, out)
	}
	var ns []int
	for _, name := range st.RunningNodes {
		if n, ok := clusterNodeIndex(name); ok {
			ns = append(ns, n)
		}
	}
	slices.Sort(ns)
	return ns, nil
}

// Ctl runs rabbitmqctl against node i, with the node's environment, and
// returns what it printed on stdout. An error includes its stderr.
func (c *Cluster) Ctl(ctx context.Context, i int, args ...string) (string, error) {
	checkClusterNode(i)
	return c.run(ctx, i, "rabbitmqctl", append([]string{"-n", c.Node(i)}, args...)...)
}

// QueueLeader returns the node that leads quorum queue queue in vhost
// "/", from list_queues' leader column. Through a surviving node it shows
// the new leader within a second of the old one's death. Poll it.
func (c *Cluster) QueueLeader(ctx context.Context, queue string) (int, error) {
	typ, leader, _, err := c.queueInfo(ctx, queue)
	if err != nil {
		return 0, err
	}
	if typ != "quorum" {
		return 0, fmt.Errorf("queue %s is a %s queue, not a quorum queue", queue, typ)
	}
	n, ok := clusterNodeIndex(leader)
	if !ok {
		return 0, fmt.Errorf("quorum queue %s: no leader (%q)", queue, leader)
	}
	return n, nil
}

// QueueNode returns the home node of classic queue queue in vhost "/": the
// node of its queue process, from list_queues' pid column.
func (c *Cluster) QueueNode(ctx context.Context, queue string) (int, error) {
	typ, _, pidNode, err := c.queueInfo(ctx, queue)
	if err != nil {
		return 0, err
	}
	if typ != "classic" {
		return 0, fmt.Errorf("queue %s is a %s queue, not a classic queue", queue, typ)
	}
	n, ok := clusterNodeIndex(pidNode)
	if !ok {
		return 0, fmt.Errorf("classic queue %s: no home node (%q)", queue, pidNode)
	}
	return n, nil
}

// queueInfo returns queue's type, its leader (quorum queues) and the node
// of its pid. The table form is parsed because the JSON form prints pids
// without their node (#PID<12768.1639.0>); -s drops the header rows.
func (c *Cluster) queueInfo(ctx context.Context, queue string) (typ, leader, pidNode string, err error) {
	out, err := c.Ctl(ctx, c.up(), "-s", "list_queues", "name", "type", "leader", "pid")
	if err != nil {
		return "", "", "", err
	}
	return parseQueueRow(out, queue)
}

func parseQueueRow(out, queue string) (typ, leader, pidNode string, err error) {
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 4 || f[0] != queue {
			continue
		}
		// <stalkc3@localhost.1796188559.1639.0>
		pid := strings.TrimPrefix(f[3], "<")
		if at := strings.IndexByte(pid, '@'); at >= 0 {
			if dot := strings.IndexByte(pid[at:], '.'); dot >= 0 {
				pidNode = pid[:at+dot]
			}
		}
		return f[1], f[2], pidNode, nil
	}
	return "", "", "", fmt.Errorf("list_queues: no queue %s", queue)
}

// Close stops the three nodes (rabbitmqctl stop, then SIGKILL for a node
// that has not stopped within 30 s), stops anything else left with their
// names, removes the cluster's folder and releases the cluster lock. It
// takes about 8 s. Close is idempotent: later calls return the first
// call's result.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		errs := []error{c.each(c.shutdown)}
		errs = append(errs, cleanClusterLeftovers())
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
		unlockFile(c.lock)
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

func (c *Cluster) shutdown(i int) error {
	pid, err := c.pid(i)
	if err != nil || !procAlive(pid) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// With the pid file, stop returns once the process has exited.
	_, err = c.Ctl(ctx, i, "stop", c.pidFile(i))
	if procAlive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if !awaitProcGone(pid, 10*time.Second) {
			return errors.Join(err, fmt.Errorf("node %d: process %d survives SIGKILL", i, pid))
		}
	}
	return nil
}

// boot starts node i's server, detached, and waits until the node has
// booted (rabbitmqctl wait, which needs the pid file the node writes).
func (c *Cluster) boot(ctx context.Context, i int) error {
	_ = os.Remove(c.pidFile(i)) // a stale one would make wait watch a dead pid
	out, err := os.OpenFile(filepath.Join(c.nodeDir(i), "log", "start.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, filepath.Join(c.sbin, "rabbitmq-server"), "-detached")
	cmd.Env = c.env(i)
	cmd.Dir = c.nodeDir(i) // where mnesia drops a MnesiaCore.* dump, if it fails
	// A file, not a pipe: the detached VM inherits it and keeps it open.
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("boot node %d: rabbitmq-server -detached: %w%s", i, err, c.logTail(i))
	}
	if _, err := c.Ctl(ctx, i, "-q", "--timeout", "120", "wait", c.pidFile(i)); err != nil {
		return fmt.Errorf("boot node %d: %w%s", i, err, c.logTail(i))
	}
	return nil
}

// awaitJoined waits until cluster_status through node i shows node i and
// every node not stopped or killed through c as running, and then until
// node i accepts an AMQP connection.
func (c *Cluster) awaitJoined(ctx context.Context, i int) error {
	var last string
	for {
		want := c.upNodes()
		if !slices.Contains(want, i) {
			want = append(want, i)
			slices.Sort(want)
		}
		out, err := c.Ctl(ctx, i, "cluster_status", "--formatter", "json")
		if err == nil {
			var got []int
			if got, err = parseClusterStatus(out); err == nil && slices.Equal(got, want) {
				break
			}
			last = fmt.Sprintf("running nodes %v, want %v", got, want)
		}
		if err != nil {
			last = err.Error()
		}
		if err := sleepOrDone(ctx, 250*time.Millisecond); err != nil {
			return fmt.Errorf("node %d has not joined: %s: %w", i, last, err)
		}
	}
	for {
		conn, err := amqp091.DialConfig(c.URL(i), amqp91Config(3*time.Second))
		if err == nil {
			return conn.Close()
		}
		if err := sleepOrDone(ctx, 250*time.Millisecond); err != nil {
			return fmt.Errorf("node %d takes no AMQP connection: %v: %w", i, err, ctx.Err())
		}
	}
}

// run runs one of the server's scripts with node i's environment.
func (c *Cluster) run(ctx context.Context, i int, script string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.sbin, script), args...)
	cmd.Env = c.env(i)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String() + "\n" + stdout.String())
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", script, strings.Join(args, " "), err, msg)
	}
	return stdout.String(), nil
}

// env is node i's environment, for its server and for the CLI: the
// recipe's variables, and nothing of the caller's HOME, RABBITMQ_* or
// ERL_*.
func (c *Cluster) env(i int) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "RABBITMQ_") || strings.HasPrefix(kv, "ERL_") {
			continue
		}
		env = append(env, kv)
	}
	d := c.nodeDir(i)
	return append(env,
		"HOME="+filepath.Join(c.dir, "home"),
		"RABBITMQ_NODENAME="+c.Node(i),
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(amqpPortBase+i),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(distPortBase+i),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(c.dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(d, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(d, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(d, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(d, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(d, "log"),
		"RABBITMQ_PID_FILE="+c.pidFile(i),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
}

func (c *Cluster) nodeDir(i int) string { return filepath.Join(c.dir, "n"+strconv.Itoa(i)) }
func (c *Cluster) pidFile(i int) string { return filepath.Join(c.nodeDir(i), "pid") }

func (c *Cluster) pid(i int) (int, error) {
	b, err := os.ReadFile(c.pidFile(i))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// logTail is the end of node i's log, for an error message.
func (c *Cluster) logTail(i int) string {
	b, err := os.ReadFile(filepath.Join(c.nodeDir(i), "log", c.Node(i)+".log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return "\nend of " + c.Node(i) + ".log:\n" + string(b)
}

func (c *Cluster) setDown(i int, down bool) {
	checkClusterNode(i)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down[i] = down
}

// upNodes are the nodes not stopped or killed through c.
func (c *Cluster) upNodes() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ns []int
	for i := 1; i <= clusterNodes; i++ {
		if !c.down[i] {
			ns = append(ns, i)
		}
	}
	return ns
}

// up is the first node not stopped or killed through c, or 1.
func (c *Cluster) up() int {
	if ns := c.upNodes(); len(ns) > 0 {
		return ns[0]
	}
	return 1
}

func checkClusterNode(i int) {
	if i < 1 || i > clusterNodes {
		panic(fmt.Sprintf("harness: cluster node %d: nodes are 1, 2 and 3", i))
	}
}

// clusterNodeIndex turns "stalkc2@localhost" into 2.
func clusterNodeIndex(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "stalkc")
	if !ok {
		return 0, false
	}
	digits, ok := strings.CutSuffix(rest, "@localhost")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 1 || n > clusterNodes {
		return 0, false
	}
	return n, true
}

// cleanClusterLeftovers stops every process of a node named stalkc1..3@localhost
// (found by RABBITMQ_NODENAME in its environment: the 3.10 server has the
// name nowhere on its command line), SIGTERM first and SIGKILL after 15 s,
// and removes the /tmp/stalkc-* folders. Call it with the cluster lock
// held, and no CLI of ours running: then all of these are leftovers.
func cleanClusterLeftovers() error {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil || pid == os.Getpid() || !procAlive(pid) {
			continue
		}
		for i := 1; i <= clusterNodes; i++ {
			if procIsNode(pid, fmt.Sprintf("stalkc%d@localhost", i)) {
				pids = append(pids, pid)
				break
			}
		}
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	var errs []error
	for _, pid := range pids {
		if awaitProcGone(pid, 15*time.Second) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if !awaitProcGone(pid, 10*time.Second) {
			errs = append(errs, fmt.Errorf("process %d survives SIGKILL", pid))
		}
	}
	dirs, _ := filepath.Glob(clusterDirGlob)
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "rabbitmq-env.conf")); err != nil {
			continue // not a cluster folder of ours
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// clusterPortsFree checks that the cluster's AMQP and distribution ports are
// free, so that a node of someone else's is not mistaken for ours.
func clusterPortsFree() error {
	for i := 1; i <= clusterNodes; i++ {
		for _, port := range []int{amqpPortBase + i, distPortBase + i} {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				return fmt.Errorf("cluster port %d is taken, by no node of ours: %w", port, err)
			}
			l.Close()
		}
	}
	return nil
}

// procIsNode reports whether process pid runs with RABBITMQ_NODENAME=node.
func procIsNode(pid int, node string) bool {
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	want := []byte("RABBITMQ_NODENAME=" + node)
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		if bytes.Equal(kv, want) {
			return true
		}
	}
	return false
}

// procAlive reports whether process pid exists and is not a zombie. The nodes
// are detached, so their parent is init, which on some machines never
// reaps them: a killed node can stay a zombie.
func procAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...; comm may hold spaces and parentheses.
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 || end+2 >= len(s) {
		return false
	}
	state := s[end+2]
	return state != 'Z' && state != 'X'
}

func awaitProcGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for procAlive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

func sleepOrDone(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lockFileExclusive takes an exclusive flock on path, waiting until ctx ends.
func lockFileExclusive(ctx context.Context, path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		if err := sleepOrDone(ctx, 200*time.Millisecond); err != nil {
			f.Close()
			return nil, fmt.Errorf("held by another test binary: %w", err)
		}
	}
}

func unlockFile(f *os.File) {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}

// ClusterMain is Main for a test package that needs a cluster: it takes
// the shared broker lock, starts a Cluster (waiting up to 5 minutes, the
// wait for another binary's cluster included), runs setup with it, runs
// m, and then stops the Celery workers started through StartWorker and
// closes the cluster. Call it from TestMain:
//
//	os.Exit(harness.ClusterMain(m, func(c *harness.Cluster) error { cluster = c; return nil }))
//
// If the cluster cannot start, the run fails when STALK_REQUIRE_BROKER=1
// and is skipped with a message otherwise. A setup error, or a teardown
// that leaves something behind, fails the run. SIGINT and SIGTERM tear
// the cluster down before the binary exits.
func ClusterMain(m *testing.M, setup ...func(*Cluster) error) int {
	require := os.Getenv("STALK_REQUIRE_BROKER") == "1"
	if _, err := ServerSbin(); err != nil {
		return clusterCannotStart(require, err)
	}
	unlock, err := lockBroker(Shared)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	defer unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	c, err := StartCluster(ctx)
	cancel()
	if err != nil {
		return clusterCannotStart(require, err)
	}
	fmt.Fprintf(os.Stderr, "cluster: 3 nodes running in %s (%s)\n", c.StartupTime().Round(100*time.Millisecond), c.Dir())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		if s, ok := <-sigs; ok {
			fmt.Fprintf(os.Stderr, "cluster: %s: tearing down\n", s)
			stopAll()
			_ = c.Close()
			os.Exit(1)
		}
	}()

	code := 0
	for _, fn := range setup {
		if err := fn(c); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: test setup: %v\n", err)
			code = 1
			break
		}
	}
	if code == 0 {
		code = m.Run()
	}
	stopAll()
	begin := time.Now()
	if err := c.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: cluster teardown: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "cluster: torn down in %s\n", time.Since(begin).Round(100*time.Millisecond))
	return code
}

func clusterCannotStart(require bool, err error) int {
	if require {
		fmt.Fprintf(os.Stderr, "FAIL: the RabbitMQ test cluster cannot start and STALK_REQUIRE_BROKER=1: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "SKIP: the RabbitMQ test cluster cannot start (%v); cluster tests skipped. Set STALK_REQUIRE_BROKER=1 to make this a failure.\n", err)
	return 0
}
