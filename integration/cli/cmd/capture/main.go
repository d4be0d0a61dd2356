// Command capture records real runs of the stalk CLI against a real Celery
// worker, for the docs:
//
//	go run ./integration/cli/cmd/capture -out docs
//
// It builds cmd/stalk, starts a worker (tasks from
// integration/harness/celeryapp, nodename demo@<host>, task events on) on
// the queue named by -queue, and then:
//
//   - runs `stalk call tasks.progress 10 0.2` under script(1), in a
//     pseudo-terminal, and writes cli-call.txt (a frame from the middle of
//     the run and the final screen) and cli-call.svg (the same, drawn as a
//     terminal);
//   - runs every command of docs/cli.md's template (cli.md.tmpl beside this
//     file) through sh, with the binary on $PATH and $STALK_BROKER_URL and
//     $STALK_DEFAULT_QUEUE set, and writes docs/cli.md with each command's
//     real output (stdout and stderr as a terminal interleaves them) and
//     its exit status.
package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"
	"unicode/utf8"

	"github.com/stalk-dev/stalk/integration/harness"
)

//go:embed cli.md.tmpl
var docTemplate string

func main() {
	out := flag.String("out", "docs", "folder for cli.md, cli-call.txt and cli-call.svg")
	queue := flag.String("queue", "stalk-demo", "task queue for the worker and the commands")
	flag.Parse()
	if err := run(*out, *queue); err != nil {
		fmt.Fprintln(os.Stderr, "capture:", err)
		os.Exit(1)
	}
}

func run(dir, queue string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
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
	// With the VCS stamp, for --version, when git can give it.
	if err := exec.CommandContext(ctx, "go", "build", "-buildvcs=true", "-o", bin, "./cmd/stalk").Run(); err != nil {
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/stalk").CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/stalk (run this from the repository root): %v: %s", err, out)
		}
	}
	w, err := harness.StartWorker(harness.WorkerConfig{Queue: queue, Name: "demo", Concurrency: 2, Events: true})
	if err != nil {
		return err
	}
	defer func() {
		w.Stop()
		// The template's own queues.
		for _, q := range []string{queue, "stalk-demo-nobody", "stalk-demo-quorum", "stalk-demo-missing", "stalk-demo-extra", "stalk-demo-purge"} {
			_, _ = harness.Rabbitmqctl("delete_queue", q)
		}
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := captureCall(ctx, script, bin, queue, dir); err != nil {
		return err
	}
	r := &runner{ctx: ctx, dir: tmp, queue: queue, worker: w.Hostname, out: dir}
	doc, err := r.render()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cli.md"), doc, 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s, %s and %s\n", filepath.Join(dir, "cli.md"), filepath.Join(dir, "cli-call.txt"), filepath.Join(dir, "cli-call.svg"))
	return nil
}

// ---- the pseudo-terminal run ------------------------------------------------------

func captureCall(ctx context.Context, script, bin, queue, dir string) error {
	shown := "stalk call tasks.progress 10 0.2 --queue " + queue
	line := fmt.Sprintf("stty cols 100 2>/dev/null; %s --broker %s call tasks.progress 10 0.2 --queue %s",
		bin, harness.BrokerURL(), queue)
	cmd := exec.CommandContext(ctx, script, "-qec", line, "/dev/null")
	cmd.Env = append(os.Environ(), "TERM=xterm")
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
	if err := os.WriteFile(filepath.Join(dir, "cli-call.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cli-call.svg"), svg(lines), 0o644)
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

// ---- the documented commands --------------------------------------------------------

// runner runs the template's commands through sh, in order.
type runner struct {
	ctx    context.Context
	dir    string // holds the stalk binary; put first on $PATH
	queue  string
	worker string
	out    string // the docs folder
	bg     map[string]*background
	seq    int
}

type background struct {
	line string
	cmd  *exec.Cmd
	out  *bytes.Buffer
}

func (r *runner) env() []string {
	return append(os.Environ(),
		"PATH="+r.dir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"STALK_BROKER_URL="+harness.BrokerURL(),
		"CELERY_BROKER_URL=",
		"STALK_DEFAULT_QUEUE="+r.queue,
		"COLUMNS=100",
	)
}

func (r *runner) sh(line string, stdin string) (string, int, error) {
	cmd := exec.CommandContext(r.ctx, "sh", "-c", line)
	cmd.Env = r.env()
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return "", 0, fmt.Errorf("%s: %w", line, err)
	}
	return out.String(), code, nil
}

// block formats one command and its output as a shell transcript.
func block(line, out string, code int) string {
	var b strings.Builder
	b.WriteString("```console\n$ " + line + "\n")
	b.WriteString(out)
	if out != "" && !strings.HasSuffix(out, "\n") {
		b.WriteString("\n")
	}
	if code != 0 {
		fmt.Fprintf(&b, "$ echo $?\n%d\n", code)
	}
	b.WriteString("```")
	return b.String()
}

func (r *runner) render() ([]byte, error) {
	r.bg = map[string]*background{}
	funcs := template.FuncMap{
		// run runs a command and shows it with its output.
		"run": func(line string) (string, error) {
			out, code, err := r.sh(line, "")
			if err != nil {
				return "", err
			}
			return block(line, out, code), nil
		},
		// remote is run for a remote-control command, sent to the demo
		// worker only (-d): the broker may have other workers, and a
		// control command must not change them.
		"remote": func(line string) (string, error) {
			line += " -d " + r.worker
			out, code, err := r.sh(line, "")
			if err != nil {
				return "", err
			}
			return block(line, out, code), nil
		},
		"remoteFirst": func(n int, line string) (string, error) {
			line += " -d " + r.worker
			out, code, err := r.sh(line, "")
			if err != nil {
				return "", err
			}
			lines := strings.SplitAfter(out, "\n")
			if len(lines) > n+1 {
				out = strings.Join(lines[:n], "") + fmt.Sprintf("… (%d more lines)\n", len(lines)-n-1)
			}
			return block(line, out, code), nil
		},
		"remoteQuiet": func(line string) (string, error) {
			_, _, err := r.sh(line+" -d "+r.worker, "")
			return "", err
		},
		// runIn is run with stdin; the block shows it as piped.
		"runIn": func(stdin, line string) (string, error) {
			out, code, err := r.sh(line, stdin)
			if err != nil {
				return "", err
			}
			return block(fmt.Sprintf("printf %q | %s", stdin, line), out, code), nil
		},
		// first runs a command, shows it, and keeps only the first
		// lines of its output.
		"first": func(n int, line string) (string, error) {
			out, code, err := r.sh(line, "")
			if err != nil {
				return "", err
			}
			lines := strings.SplitAfter(out, "\n")
			if len(lines) > n+1 {
				out = strings.Join(lines[:n], "") + fmt.Sprintf("… (%d more lines)\n", len(lines)-n-1)
			}
			return block(line, out, code), nil
		},
		// value runs a command without showing it and returns its stdout,
		// trimmed: ids for later commands.
		"value": func(line string) (string, error) {
			cmd := exec.CommandContext(r.ctx, "sh", "-c", line)
			cmd.Env = r.env()
			out, err := cmd.Output()
			if err != nil {
				return "", fmt.Errorf("%s: %w", line, err)
			}
			return strings.TrimSpace(string(out)), nil
		},
		// quiet runs a command without showing it.
		"quiet": func(line string) (string, error) {
			_, _, err := r.sh(line, "")
			return "", err
		},
		// start runs a command in the background; finish waits for it and
		// shows it.
		"start": func(line string) (string, error) {
			r.seq++
			key := fmt.Sprint(r.seq)
			cmd := exec.CommandContext(r.ctx, "sh", "-c", line)
			cmd.Env = r.env()
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				return "", err
			}
			r.bg[key] = &background{line: line, cmd: cmd, out: &out}
			return key, nil
		},
		"finish": func(key string) (string, error) {
			b := r.bg[key]
			code := 0
			if err := b.cmd.Wait(); err != nil {
				ee, ok := err.(*exec.ExitError)
				if !ok {
					return "", err
				}
				code = ee.ExitCode()
			}
			return block(b.line, b.out.String(), code), nil
		},
		"sleep": func(s float64) string {
			time.Sleep(time.Duration(s * float64(time.Second)))
			return ""
		},
		// callTranscript is the pseudo-terminal run, as written to
		// cli-call.txt.
		"callTranscript": func() (string, error) {
			b, err := os.ReadFile(filepath.Join(r.out, "cli-call.txt"))
			return strings.TrimRight(string(b), "\n"), err
		},
		"queue":  func() string { return r.queue },
		"worker": func() string { return r.worker },
		"celery": func() string { return harness.CeleryVersion() },
	}
	t, err := template.New("cli.md").Funcs(funcs).Parse(docTemplate)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, nil); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
