package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
)

// The memory test runs in a child process (this binary, re-executed with
// childEnv set), so that its RSS holds nothing but one stalk client and
// its pending results: no echo worker, no earlier modes' garbage.
const childEnv = "STALK_BENCH_CHILD"

type pendingReport struct {
	Pending         int     `json:"pending"`
	RSSMB           float64 `json:"rss_mb"`          // VmRSS with every result pending
	BaselineRSSMB   float64 `json:"baseline_rss_mb"` // VmRSS after Dial and one send
	HeapMB          float64 `json:"heap_mb"`         // HeapInuse after a GC, results still held
	ChannelsIdle    int     `json:"channels_idle"`   // with one result pending
	ChannelsPending int     `json:"channels_pending"`
	ChannelsSource  string  `json:"channels_source"` // "rabbitmqctl" or "client"
	Mode            string  `json:"mode"`            // "shared" or "pertask"
	Goroutines      int     `json:"goroutines"`      // with every result pending
}

type childParams struct {
	URL     string `json:"url"`
	Prefix  string `json:"prefix"`
	Queue   string `json:"queue"`
	Pending int    `json:"pending"`
	Window  int    `json:"window"`
	Expires string `json:"expires"`
	Mode    string `json:"mode"`
	Lanes   int    `json:"lanes"`
}

// runPendingChild runs the memory test in a child process, with n results
// pending in mode, and deletes its queue afterwards.
func runPendingChild(ctx context.Context, cfg *config, mode string, n int) (*pendingReport, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	q := cfg.prefix + "-pending-" + mode
	defer deleteQueue(cfg, q)
	p, _ := json.Marshal(childParams{URL: cfg.url, Prefix: cfg.prefix, Queue: q, Pending: n,
		Window: 256, Expires: cfg.ceilingExpires.String(), Mode: mode, Lanes: cfg.lanes})
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(p))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("child: %w: %s", err, lastLines(stderr.String(), 5))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var r pendingReport
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return nil, fmt.Errorf("child output %q: %w", lines[len(lines)-1], err)
	}
	return &r, nil
}

func childMain() int {
	var p childParams
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &p); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	r, err := pendingChild(p)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
	return 0
}

func pendingChild(p childParams) (*pendingReport, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	expires, err := time.ParseDuration(p.Expires)
	if err != nil {
		return nil, err
	}
	if p.Mode == "" {
		p.Mode = "shared"
	}
	cfg := &config{url: p.URL, prefix: p.Prefix, taskQueue: p.Queue, ceilingExpires: expires, lanes: p.Lanes}
	tag := "pending-" + p.Mode
	c, err := stalkClient(ctx, cfg, p.Mode, tag)
	if err != nil {
		return nil, err
	}
	// Users hold their AsyncResults; so does the test.
	results := make([]*result.AsyncResult, p.Pending)
	defer func() {
		c.Close()
		deleteQueue(cfg, p.Queue)
		if p.Mode == "shared" {
			deleteQueue(cfg, c.ReplyQueue(""))
			return
		}
		var ids []string
		for _, r := range results {
			if r != nil {
				ids = append(ids, r.ID())
			}
		}
		deleteReplyQueues(cfg, c, ids)
	}()
	rep := &pendingReport{Pending: p.Pending, ChannelsSource: "rabbitmqctl", Mode: p.Mode}
	channels := func() int {
		if n, conns, err := brokerChannels(ctx, p.Prefix+" "+tag); err == nil && conns > 0 {
			return n
		}
		rep.ChannelsSource = "client"
		return c.Stats().Channels
	}

	first, err := c.Send(ctx, "tasks.echo", amqp.Args(0), amqp.Queue(p.Queue))
	if err != nil {
		return nil, err
	}
	results[0] = first
	rep.ChannelsIdle = channels()
	rep.BaselineRSSMB = vmRSSMB()

	var next atomic.Int64
	next.Store(1)
	errc := make(chan error, p.Window)
	var wg sync.WaitGroup
	for g := 0; g < p.Window; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= p.Pending {
					return
				}
				r, err := c.Send(ctx, "tasks.echo", amqp.Args(i), amqp.Queue(p.Queue))
				if err != nil {
					errc <- err
					return
				}
				results[i] = r
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return nil, err
	default:
	}
	rep.RSSMB = vmRSSMB()
	rep.Goroutines = runtime.NumGoroutine()
	rep.ChannelsPending = channels()
	if st := c.Stats(); st.Pending < p.Pending {
		// Pending counts results somebody asked for; stalk may count a
		// result as pending only once Get is waiting on it.
		fmt.Fprintf(os.Stderr, "child: client reports %d pending results of %d sent\n", st.Pending, p.Pending)
	}
	for _, r := range results {
		if r == nil || r.Ready() {
			return nil, fmt.Errorf("a result is missing or ready although no worker consumes %s", p.Queue)
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rep.HeapMB = float64(ms.HeapInuse) / (1 << 20)
	runtime.KeepAlive(results)
	return rep, nil
}

// vmRSSMB reads this process's resident set size from /proc/self/status.
func vmRSSMB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
