// Command capture records a real run of `stalk call` with its progress bar,
// in a pseudo-terminal, against a real Celery worker, for the README:
//
//	go run ./integration/cli/cmd/capture -out docs
//
// It builds cmd/stalk, starts a worker (tasks from
// integration/harness/celeryapp) on the queue named by -queue, runs
// `stalk call tasks.progress 10 0.2` under script(1), and writes
// cli-call.txt (a frame from the middle of the run and the final screen)
// and cli-call.svg (the same, drawn as a terminal).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/stalk-dev/stalk/integration/harness"
)

func main() {
	out := flag.String("out", "docs", "folder for cli-call.txt and cli-call.svg")
	queue := flag.String("queue", "stalk-demo", "task queue for the worker and the call")
	flag.Parse()
	if err := run(*out, *queue); err != nil {
		fmt.Fprintln(os.Stderr, "capture:", err)
		os.Exit(1)
	}
}

func run(dir, queue string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := harness.Reachable(5 * time.Second); err != nil {
		return fmt.Errorf("RabbitMQ is not reachable: %w", err)
	}
	script, err := exec.LookPath("script")
	if err != nil {
		return errors.New("script(1) (util-linux) is needed for a pseudo-terminal")
	}
	tmp, err := os.MkdirTemp("", "stalk-capture-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "stalk")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/stalk").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/stalk (run this from the repository root): %v: %s", err, out)
	}
	w, err := harness.StartWorker(harness.WorkerConfig{Queue: queue, Concurrency: 1})
	if err != nil {
		return err
	}
	defer func() {
		w.Stop()
		_, _ = harness.Rabbitmqctl("delete_queue", queue)
	}()

	shown := "stalk call tasks.progress 10 0.2 --queue " + queue
	line := fmt.Sprintf("stty cols 100 2>/dev/null; %s --broker %s call tasks.progress 10 0.2 --queue %s",
		bin, harness.BrokerURL(), queue)
	cmd := exec.CommandContext(ctx, script, "-qec", line, "/dev/null")
	var raw bytes.Buffer
	cmd.Stdout = &raw
	cmd.Stderr = &raw
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("stalk call: %v: %s", err, raw.Bytes())
	}
	sent, mid, final, value, err := frames(raw.String())
	if err != nil {
		return err
	}
	lines := []string{
		"$ " + shown,
		sent,
		mid,
		"",
		"# when it is done, the live line has become the final one:",
		final,
		value,
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cli-call.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cli-call.svg"), svg(lines), 0o644); err != nil {
		return err
	}
	fmt.Println(strings.Join(lines, "\n"))
	return nil
}

// frames splits the terminal output into what a reader saw: the "sent"
// line, a frame of the live line from the middle of the run (6 of 10
// steps), the final line, and the printed value.
func frames(out string) (sent, mid, final, value string, err error) {
	out = strings.ReplaceAll(out, "\x1b[K", "")
	out = strings.ReplaceAll(out, "\r\n", "\n")
	for _, l := range strings.Split(out, "\n") {
		switch parts := strings.Split(l, "\r"); {
		case strings.HasPrefix(l, "sent "):
			sent = l
		case strings.Contains(l, "PROGRESS") || strings.Contains(l, "SUCCESS"):
			for _, f := range parts {
				if strings.Contains(f, " 6/10 ") && mid == "" {
					mid = f
				}
			}
			final = parts[len(parts)-1]
		case strings.TrimSpace(l) != "" && sent != "" && final != "":
			value = strings.TrimSpace(l)
		}
	}
	if sent == "" || mid == "" || !strings.Contains(final, "SUCCESS") || value == "" {
		return "", "", "", "", fmt.Errorf("unexpected terminal output: %q", out)
	}
	return sent, mid, final, value, nil
}

// svg draws lines as a dark terminal.
func svg(lines []string) []byte {
	const charW, lineH, pad = 9.6, 20, 16
	width := 0
	for _, l := range lines {
		width = max(width, utf8.RuneCountInString(l))
	}
	var b bytes.Buffer
	w := int(float64(width)*charW) + 2*pad
	h := len(lines)*lineH + 2*pad
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">`+"\n", w, h, w, h)
	b.WriteString(`<rect width="100%" height="100%" rx="6" fill="#1e1e1e"/>` + "\n")
	b.WriteString(`<g font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="16" fill="#e6e6e6">` + "\n")
	for i, l := range lines {
		if l == "" {
			continue
		}
		fill := ""
		switch {
		case strings.HasPrefix(l, "$ ") || strings.HasPrefix(l, "# "):
			fill = ` fill="#9cc4ff"`
		case strings.Contains(l, "SUCCESS"):
			fill = ` fill="#8fd18f"`
		case strings.Contains(l, "PROGRESS"):
			fill = ` fill="#e6c07b"`
		}
		n := utf8.RuneCountInString(l)
		fmt.Fprintf(&b, `<text x="%d" y="%d" xml:space="preserve" textLength="%.1f" lengthAdjust="spacingAndGlyphs"%s>%s</text>`+"\n",
			pad, pad+(i+1)*lineH-5, float64(n)*charW, fill, html.EscapeString(l))
	}
	b.WriteString("</g></svg>\n")
	return b.Bytes()
}
