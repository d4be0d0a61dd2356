package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/result"
)

// Exit codes. They are part of the CLI's contract: scripts test them.
const (
	exitOK          = 0   // success
	exitFailed      = 1   // the task failed or was revoked; a worker replied with an error; nobody replied
	exitUsage       = 2   // bad command line: unknown command or flag, bad JSON, bad duration
	exitTimeout     = 3   // --timeout passed before the result was ready
	exitBroker      = 4   // the broker is unreachable or refused the connection
	exitInterrupted = 130 // interrupted (Ctrl-C)
)

const defaultBroker = "amqp://guest:guest@localhost:5672//"

// env is what the CLI needs from the process: streams, whether they are
// terminals, the environment. Tests build their own.
type env struct {
	stdout, stderr io.Writer
	stdoutTTY      bool
	stderrTTY      bool
	getenv         func(string) string
	width          func() int // terminal width of stderr, in columns
	now            func() time.Time
}

func newEnv() *env {
	return &env{
		stdout:    os.Stdout,
		stderr:    os.Stderr,
		stdoutTTY: isTerminal(os.Stdout),
		stderrTTY: isTerminal(os.Stderr),
		getenv:    os.Getenv,
		width:     func() int { return termWidth(os.Stderr) },
		now:       time.Now,
	}
}

// globals are the flags accepted before the command (and, for
// convenience, after it too).
type globals struct {
	broker         string
	json           bool
	logLevel       string
	connectTimeout time.Duration
}

// app is one invocation: the environment, the global flags and the logger.
type app struct {
	*env
	g    globals
	log  zerolog.Logger
	gate *gatedWriter
	cmd  string // the running command, for messages
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, a *app, args []string) error
}

func commands() []command {
	return []command{
		{"call", "send a task and wait for its result", runCall},
		{"result", "show the state and result of a task id", runResult},
		{"revoke", "revoke tasks, terminating them if running", runRevoke},
		{"ping", "ask the workers to answer", runPing},
		{"inspect", "ask the workers what they run (active) or have revoked (revoked)", runInspect},
		{"events", "follow Celery's event stream", runEvents},
		{"graph", "print a task's dependency graph as DOT", runGraph},
	}
}

// run is the whole CLI; it returns the exit code.
func run(ctx context.Context, args []string, e *env) int {
	a := &app{env: e}
	a.g.broker = defaultBrokerURL(e.getenv)
	a.g.logLevel = "warn"
	a.g.connectTimeout = 5 * time.Second

	fs := flag.NewFlagSet("stalk", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	a.globalFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.topUsage(e.stdout)
			return exitOK
		}
		return a.fail(usagef("%v", err))
	}
	rest := fs.Args()
	if len(rest) == 0 {
		a.topUsage(e.stderr)
		return exitUsage
	}
	name := rest[0]
	if name == "help" {
		if len(rest) > 1 {
			return run(ctx, append(append([]string(nil), args[:len(args)-len(rest)]...), rest[1], "--help"), e)
		}
		a.topUsage(e.stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == name {
			a.cmd = name
			err := c.run(ctx, a, rest[1:])
			if err != nil {
				if ctx.Err() != nil && !errors.Is(err, errHelp) {
					if _, ok := err.(exitCode); !ok {
						fmt.Fprintf(e.stderr, "stalk %s: interrupted\n", name)
						return exitInterrupted
					}
				}
				return a.fail(err)
			}
			return exitOK
		}
	}
	msg := fmt.Sprintf("unknown command %q", name)
	if s := suggest(name); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return a.fail(usagef("%s (run 'stalk --help' for the list of commands)", msg))
}

// globalFlags registers the global flags on fs. Each command's FlagSet
// registers them too, with the values parsed so far as defaults, so that
// "stalk call --json ..." works like "stalk --json call ...".
func (a *app) globalFlags(fs *flag.FlagSet) {
	fs.Var((*brokerFlag)(&a.g.broker), "broker", "broker `URL` (amqp:// or amqps://); default $STALK_BROKER_URL, then $CELERY_BROKER_URL, then "+broker.Redact(defaultBroker))
	fs.BoolVar(&a.g.json, "json", a.g.json, "machine-readable output: one JSON object per line on stdout")
	fs.StringVar(&a.g.logLevel, "log-level", a.g.logLevel, "library log `level` on stderr: debug, info, warn, error or disabled")
	fs.DurationVar(&a.g.connectTimeout, "connect-timeout", a.g.connectTimeout, "give up connecting to the broker after this `duration`")
}

func defaultBrokerURL(getenv func(string) string) string {
	for _, k := range []string{"STALK_BROKER_URL", "CELERY_BROKER_URL"} {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
	}
	return defaultBroker
}

// brokerFlag is a flag.Value whose String redacts the password, so that
// --help never prints it.
type brokerFlag string

func (b *brokerFlag) String() string {
	if b == nil {
		return ""
	}
	return broker.Redact(string(*b))
}

func (b *brokerFlag) Set(s string) error { *b = brokerFlag(s); return nil }

// brokerURL checks the broker URL and turns Celery's form into the one
// amqp091 reads: Celery writes the default vhost "/" as a trailing "//";
// amqp091 reads the path after the first "/" as the vhost, so "//" and
// "/" both mean "/" there, and we send "/" for clarity. Other vhosts are
// kept as they are ("/prod", "/%2Fprod").
func normalizeBrokerURL(raw string) (string, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", usagef("--broker is empty: give an amqp:// URL, or set $STALK_BROKER_URL")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", usagef("--broker %s is not a valid URL: give one like %s", broker.Redact(raw), broker.Redact(defaultBroker))
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return "", usagef("--broker %s: stalk speaks AMQP only; give an amqp:// or amqps:// URL", broker.Redact(raw))
	}
	if u.Host == "" {
		return "", usagef("--broker %s has no host: give one like %s", broker.Redact(raw), broker.Redact(defaultBroker))
	}
	if u.Path == "//" && u.RawPath == "" {
		u.Path = "/"
		return u.String(), nil
	}
	return raw, nil
}

// setup validates the global flags and builds the logger. Commands call
// it after parsing their flags.
func (a *app) setup() error {
	lvl, err := zerolog.ParseLevel(strings.ToLower(a.g.logLevel))
	if err != nil || a.g.logLevel == "" {
		return usagef("--log-level %q: want debug, info, warn, error or disabled", a.g.logLevel)
	}
	if a.g.connectTimeout <= 0 {
		return usagef("--connect-timeout must be positive, got %s", a.g.connectTimeout)
	}
	if _, err := normalizeBrokerURL(a.g.broker); err != nil {
		return err
	}
	var w io.Writer = a.stderr
	if !a.g.json {
		w = zerolog.ConsoleWriter{Out: a.stderr, NoColor: !a.stderrTTY, TimeFormat: "15:04:05"}
	}
	// Until the first connection is up, a failure is reported once, by
	// connectError, not by every retry the library logs; --log-level
	// debug shows them all.
	a.gate = &gatedWriter{w: w}
	if lvl <= zerolog.DebugLevel {
		a.gate.open.Store(true)
	}
	a.log = zerolog.New(a.gate).Level(lvl).With().Timestamp().Logger()
	return nil
}

// connected opens the log gate.
func (a *app) connected() {
	if a.gate != nil {
		a.gate.open.Store(true)
	}
}

// gatedWriter drops log lines until it is opened.
type gatedWriter struct {
	w    io.Writer
	open atomic.Bool
	mu   sync.Mutex
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	if !g.open.Load() {
		return len(p), nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.w.Write(p)
}

// url returns the normalized broker URL; setup has checked it.
func (a *app) url() string {
	u, _ := normalizeBrokerURL(a.g.broker)
	return u
}

// ---- errors and exit codes -------------------------------------------------

// usageError is a bad command line: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// brokerError is a failure to connect: exit 4.
type brokerError struct{ msg string }

func (e *brokerError) Error() string { return e.msg }

// exitCode is an error that has been reported already; the CLI exits
// with it and prints nothing more.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// errHelp: --help was asked for and printed.
var errHelp = errors.New("help printed")

// fail prints err as one line on stderr and returns its exit code.
func (a *app) fail(err error) int {
	var code exitCode
	if errors.As(err, &code) {
		return int(code)
	}
	if errors.Is(err, errHelp) {
		return exitOK
	}
	prefix := "stalk"
	if a.cmd != "" {
		prefix += " " + a.cmd
	}
	// Library errors start with "stalk: "; our prefix says it already.
	msg := a.redact(strings.ReplaceAll(oneLine(err.Error()), "stalk: ", ""))
	var ue *usageError
	var be *brokerError
	switch {
	case errors.As(err, &ue):
		if a.cmd != "" && !strings.Contains(msg, "--help") {
			msg += fmt.Sprintf(" (see 'stalk %s --help')", a.cmd)
		}
		fmt.Fprintf(a.stderr, "%s: %s\n", prefix, msg)
		return exitUsage
	case errors.As(err, &be):
		fmt.Fprintf(a.stderr, "%s: %s\n", prefix, msg)
		return exitBroker
	case errors.Is(err, result.ErrTimeout):
		fmt.Fprintf(a.stderr, "%s: %s\n", prefix, msg)
		return exitTimeout
	}
	fmt.Fprintf(a.stderr, "%s: %s\n", prefix, msg)
	return exitFailed
}

// redact removes the broker password from a message, whatever form it
// took: escaped as in the URL, or decoded.
func (a *app) redact(msg string) string {
	user, pw := credentials(a.g.broker)
	if pw == "" {
		return msg
	}
	forms := []string{pw}
	if dec, err := url.PathUnescape(pw); err == nil && dec != pw {
		forms = append(forms, dec)
	}
	for _, f := range forms {
		msg = strings.ReplaceAll(msg, ":"+f+"@", ":xxxxx@")
		if len(f) >= 6 && f != user {
			msg = strings.ReplaceAll(msg, f, "xxxxx")
		}
	}
	return msg
}

// credentials returns the user and password of a URL as written (still
// escaped), even when net/url cannot parse it.
func credentials(raw string) (user, pw string) {
	raw = strings.TrimSpace(raw)
	i := strings.Index(raw, "://")
	if i < 0 {
		return "", ""
	}
	rest := raw[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return "", ""
	}
	user, pw, _ = strings.Cut(rest[:at], ":")
	if strings.ContainsAny(user, "/?#") {
		return "", "" // the "@" is in the path, not in userinfo
	}
	return user, pw
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// connectError turns a dial error into a one-line brokerError that says
// what to do.
func (a *app) connectError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	where := broker.Redact(a.url())
	if errors.Is(err, broker.ErrAccessRefused) {
		return &brokerError{msg: fmt.Sprintf("the broker at %s refused the connection (%v); check the user, password and vhost in --broker or $STALK_BROKER_URL", where, rootCause(err))}
	}
	return &brokerError{msg: fmt.Sprintf("cannot connect to the broker at %s within %s (%v); check --broker or $STALK_BROKER_URL, that RabbitMQ is running, or raise --connect-timeout", where, a.g.connectTimeout, rootCause(err))}
}

// rootCause returns the innermost error's text, without the layers of
// "stalk: connect to ...:" that repeat the URL.
func rootCause(err error) string {
	for {
		var next error
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			next = u.Unwrap()
		case interface{ Unwrap() []error }:
			errs := u.Unwrap()
			if len(errs) > 0 {
				next = errs[len(errs)-1]
			}
		}
		if next == nil {
			return err.Error()
		}
		err = next
	}
}

// ---- flags and help ---------------------------------------------------------

// cmdSpec describes a command for its --help.
type cmdSpec struct {
	name     string
	synopsis string // after "stalk "
	about    string // a paragraph
	examples string // lines, indented by the printer
}

// newFlagSet returns a FlagSet for the command, with the global flags
// registered on it.
func (a *app) newFlagSet(spec cmdSpec) *flag.FlagSet {
	fs := flag.NewFlagSet(spec.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parse parses a command's arguments, with flags allowed anywhere among
// them (flag stops at the first positional argument; we keep going).
// Arguments that look like negative numbers are positional, and so is
// everything after "--". It prints the command's help for -h/--help.
func (a *app) parse(fs *flag.FlagSet, spec cmdSpec, args []string) ([]string, error) {
	a.globalFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.cmdUsage(a.stdout, fs, spec)
			return nil, errHelp
		}
		return nil, usagef("%v", err)
	}
	if err := a.setup(); err != nil {
		return nil, err
	}
	return pos, nil
}

func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(arg) < 2 || arg[0] != '-' || isNegativeNumber(arg) {
			pos = append(pos, arg)
			continue
		}
		name := strings.TrimLeft(arg, "-")
		chunk := []string{arg}
		// -name=value carries its value; -name takes the next argument
		// unless it is a boolean flag.
		if !strings.Contains(name, "=") {
			if f := fs.Lookup(name); f != nil && !isBoolFlag(f) {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("flag needs a value: -%s", name)
				}
				chunk = append(chunk, args[i+1])
				i++
			}
		}
		if err := fs.Parse(chunk); err != nil {
			return nil, err
		}
		if fs.NArg() != 0 {
			return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
	}
	return pos, nil
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func isNegativeNumber(s string) bool {
	if len(s) < 2 || s[0] != '-' {
		return false
	}
	return s[1] >= '0' && s[1] <= '9' || s[1] == '.'
}

func (a *app) topUsage(w io.Writer) {
	fmt.Fprint(w, `stalk sends Celery tasks over RabbitMQ and awaits their results.

Usage:
  stalk [global flags] COMMAND [ARGS...] [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Global flags (before or after the command):
`)
	fs := flag.NewFlagSet("stalk", flag.ContinueOnError)
	a.globalFlags(fs)
	printFlags(w, fs, nil)
	fmt.Fprint(w, `
Exit codes:
  0 success; 1 the task failed or was revoked, or workers replied with an
  error or not at all; 2 usage error; 3 timed out; 4 broker unreachable or
  refused the connection; 130 interrupted.

Examples:
  stalk call tasks.add 2 3
  stalk --broker amqp://user:pass@rabbit:5672/prod call reports.render '{"id": 7}' --timeout 30s
  stalk call tasks.progress 10 0.2
  stalk result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --wait
  stalk revoke 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --terminate --wait 1s
  stalk ping
  stalk events --tasks

Run 'stalk COMMAND --help' for a command's flags and examples.
`)
}

func (a *app) cmdUsage(w io.Writer, fs *flag.FlagSet, spec cmdSpec) {
	fmt.Fprintf(w, "Usage:\n  stalk %s\n\n%s\n", spec.synopsis, strings.TrimSpace(spec.about))
	global := map[string]bool{"broker": true, "json": true, "log-level": true, "connect-timeout": true}
	fmt.Fprint(w, "\nFlags:\n")
	printFlags(w, fs, func(f *flag.Flag) bool { return !global[f.Name] })
	fmt.Fprint(w, "\nGlobal flags:\n")
	printFlags(w, fs, func(f *flag.Flag) bool { return global[f.Name] })
	if spec.examples != "" {
		fmt.Fprint(w, "\nExamples:\n")
		for _, l := range strings.Split(strings.TrimSpace(spec.examples), "\n") {
			fmt.Fprintf(w, "  %s\n", strings.TrimSpace(l))
		}
	}
}

// printFlags prints flags in "--name value" form (flag's own printer shows
// "-name"), sorted, with their defaults.
func printFlags(w io.Writer, fs *flag.FlagSet, keep func(*flag.Flag) bool) {
	var fl []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if keep == nil || keep(f) {
			fl = append(fl, f)
		}
	})
	sort.Slice(fl, func(i, j int) bool { return fl[i].Name < fl[j].Name })
	if len(fl) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, f := range fl {
		arg, usage := flag.UnquoteUsage(f)
		head := "  --" + f.Name
		if arg != "" && !isBoolFlag(f) {
			head += " " + arg
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" && f.Name != "broker" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "%s\n      %s%s\n", head, usage, def)
	}
}

// suggest returns the command closest to name, if it is close.
func suggest(name string) string {
	best, bestD := "", 3
	for _, c := range commands() {
		if d := editDistance(name, c.name); d < bestD {
			best, bestD = c.name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
