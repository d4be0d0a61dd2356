package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

//go:embed pyclient.py
var pyclient []byte

// errNoPython means the interpreter or Celery is missing; the python mode
// is then reported as null, not as a failure.
var errNoPython = errors.New("python or celery not available")

func pythonPath() string {
	if p := os.Getenv("STALK_PYTHON"); p != "" {
		return p
	}
	return "/usr/bin/python3"
}

// runPython runs pyclient.py against the echo worker's queue.
func runPython(ctx context.Context, cfg *config, n int) (modeResult, error) {
	py := pythonPath()
	if _, err := os.Stat(py); err != nil {
		return modeResult{}, fmt.Errorf("%w: %s not found", errNoPython, py)
	}
	if out, err := exec.CommandContext(ctx, py, "-c", "import celery").CombinedOutput(); err != nil {
		return modeResult{}, fmt.Errorf("%w: %s cannot import celery: %s", errNoPython, py, strings.TrimSpace(string(out)))
	}
	dir, err := os.MkdirTemp("", "stalk-bench-py")
	if err != nil {
		return modeResult{}, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "pyclient.py")
	if err := os.WriteFile(script, pyclient, 0o644); err != nil {
		return modeResult{}, err
	}
	seq := cfg.seq
	if seq > n {
		seq = n
	}
	cmd := exec.CommandContext(ctx, py, script, celeryURL(cfg.url), cfg.taskQueue,
		strconv.Itoa(n), strconv.Itoa(cfg.window), strconv.Itoa(seq))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return modeResult{}, fmt.Errorf("pyclient: %w: %s", err, lastLines(stderr.String(), 5))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var r struct {
		PerS    float64 `json:"per_s"`
		P50     float64 `json:"p50_ms"`
		P99     float64 `json:"p99_ms"`
		CPU     float64 `json:"cpu_us_per_task"`
		Stalls  int     `json:"stalls"`
		NoStall float64 `json:"per_s_without_stalls"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return modeResult{}, fmt.Errorf("pyclient output %q: %w", lines[len(lines)-1], err)
	}
	return modeResult{OK: true, PerS: r.PerS, P50: r.P50, P99: r.P99, CPUus: r.CPU, Stalls: r.Stalls, NoStallPerS: r.NoStall}, nil
}

// celeryURL turns amqp://h:p/ (the default vhost) into kombu's amqp://h:p//.
func celeryURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	if p.Path == "" || p.Path == "/" {
		return strings.TrimSuffix(u, "/") + "//"
	}
	return u
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
