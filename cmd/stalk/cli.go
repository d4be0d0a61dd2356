package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/result"
)

// Exit codes. They are part of the CLI's contract: scripts test them.
const (
	exitOK          = 0   // success
	exitFailed      = 1   // the task failed or was revoked; a worker replied with an error; nobody replied; purge aborted
	exitUsage       = 2   // bad command line: unknown command or flag, bad JSON, bad duration
	exitTimeout     = 3   // --timeout passed before the result was ready
	exitBroker      = 4   // the broker is unreachable or refused the connection
	exitInterrupted = 130 // interrupted (Ctrl-C)
)

const defaultBroker = "amqp://guest:guest@localhost:5672//"

// env is what the CLI needs from the process: streams, whether they are
// terminals, the environment. Tests build their own.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	stdinTTY       bool
	stdoutTTY      bool
	stderrTTY      bool
	getenv         func(string) string
	width          func() int // terminal width of stderr, in columns
	now            func() time.Time
}

func newEnv() *env {
	return &env{
		stdin:     os.Stdin,
		stdout:    os.Stdout,
		stderr:    os.Stderr,
		stdinTTY:  isTerminal(os.Stdin),
		stdoutTTY: isTerminal(os.Stdout),
		stderrTTY: isTerminal(os.Stderr),
		getenv:    os.Getenv,
		width:     func() int { return termWidth(os.Stderr) },
		now:       time.Now,
	}
}

// globals are the root's persistent flags, accepted before or after the
// command.
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
	cmd  string // the running command's path after "stalk", for messages

	jsonOut sync.Mutex // serialises JSON lines written from callbacks
}

// run is the whole CLI; it returns the exit code.
func run(ctx context.Context, args []string, e *env) int {
	if e.stdin == nil {
		e.stdin = strings.NewReader("")
	}
	a := &app{env: e}
	a.g.broker = defaultBrokerURL(e.getenv)
	a.g.logLevel = "warn"
	a.g.connectTimeout = 5 * time.Second
	// --json decides how errors are reported, also errors met before the
	// flag itself is parsed.
	a.g.json = jsonRequested(args)

	root := a.rootCommand()
	root.SetArgs(protectNegatives(root, args))
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetIn(e.stdin)
	cmd, err := root.ExecuteContextC(ctx)
	if cmd != nil && a.cmd == "" {
		a.cmd = strings.TrimPrefix(strings.TrimPrefix(cmd.CommandPath(), "stalk"), " ")
	}
	if err == nil {
		return exitOK
	}
	if ctx.Err() != nil {
		var code exitCode
		var ue *usageError
		if !errors.As(err, &code) && !errors.As(err, &ue) {
			return a.fail(errInterrupted)
		}
	}
	return a.fail(err)
}

// jsonRequested reports whether --json or -j is among args (before "--").
func jsonRequested(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "-j", "--json=true", "--json=1":
			return true
		}
		// Short flags combined: -jq is not a thing here, but -j=true is.
		if a == "-j=true" {
			return true
		}
	}
	return false
}

func defaultBrokerURL(getenv func(string) string) string {
	for _, k := range []string{"STALK_BROKER_URL", "CELERY_BROKER_URL"} {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
	}
	return defaultBroker
}

// brokerFlag is a pflag.Value whose String redacts the passwords, so that
// --help never prints them.
type brokerFlag string

func (b *brokerFlag) String() string {
	if b == nil {
		return ""
	}
	return redactURLs(string(*b))
}

func (b *brokerFlag) Set(s string) error { *b = brokerFlag(s); return nil }
func (b *brokerFlag) Type() string       { return "URL" }

// brokerURLs splits a broker setting into its URLs: Celery's form lists
// failover brokers separated by ";".
func brokerURLs(raw string) []string {
	var out []string
	for _, u := range strings.Split(raw, ";") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// redactURLs redacts the password of every URL in a broker list.
func redactURLs(raw string) string {
	urls := brokerURLs(raw)
	for i, u := range urls {
		urls[i] = broker.Redact(u)
	}
	return strings.Join(urls, ";")
}

// checkBrokerURL checks every URL of the broker setting; the setting is
// passed to the library as it is. Celery writes the default vhost "/" as a
// trailing "//", which amqp091 reads as "/" too.
func checkBrokerURL(raw string) error {
	urls := brokerURLs(raw)
	if len(urls) == 0 {
		return usagef("--broker is empty: give an amqp:// URL, or set $STALK_BROKER_URL")
	}
	for _, one := range urls {
		u, err := url.Parse(one)
		if err != nil {
			return usagef("--broker %s is not a valid URL: give one like %s", broker.Redact(one), broker.Redact(defaultBroker))
		}
		if u.Scheme != "amqp" && u.Scheme != "amqps" {
			return usagef("--broker %s: stalk speaks AMQP only; give an amqp:// or amqps:// URL", broker.Redact(one))
		}
		if u.Host == "" {
			return usagef("--broker %s has no host: give one like %s", broker.Redact(one), broker.Redact(defaultBroker))
		}
	}
	return nil
}

// setup validates the global flags and builds the logger. It runs before
// every command (the root's PersistentPreRunE).
func (a *app) setup() error {
	lvl, err := zerolog.ParseLevel(strings.ToLower(a.g.logLevel))
	if err != nil || a.g.logLevel == "" {
		return usagef("--log-level %q: want debug, info, warn, error or disabled", a.g.logLevel)
	}
	if a.g.connectTimeout <= 0 {
		return usagef("--connect-timeout must be positive, got %s", a.g.connectTimeout)
	}
	if err := checkBrokerURL(a.g.broker); err != nil {
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

// url returns the broker setting, trimmed; setup has checked it.
func (a *app) url() string { return strings.TrimSpace(a.g.broker) }

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

// timeoutError is a wait that ran out: exit 3. ID and State say which task
// and how far it got, for the JSON error object.
type timeoutError struct {
	msg   string
	id    string
	state string // the latest state seen, or ""
}

func (e *timeoutError) Error() string { return e.msg }

// exitCode is an error that has been reported already; the CLI exits
// with it and prints nothing more.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

var errInterrupted = errors.New("interrupted")

// jsonError is the object --json prints on stdout for an error, as the
// last line. Kind is usage, failed, timeout, broker or interrupted.
type jsonError struct {
	Event    string `json:"event"` // "error"
	Kind     string `json:"error"`
	ExitCode int    `json:"exit_code"`
	Message  string `json:"message"`
	Command  string `json:"command,omitempty"`
	ID       string `json:"id,omitempty"`
	State    string `json:"state,omitempty"`
}

// fail reports err and returns its exit code: one line on stderr, and,
// with --json, a jsonError line on stdout.
func (a *app) fail(err error) int {
	var code exitCode
	if errors.As(err, &code) {
		return int(code)
	}
	prefix := "stalk"
	if a.cmd != "" {
		prefix += " " + a.cmd
	}
	// Library errors start with "stalk: " and name the operation again
	// ("revoke: ..."); our prefix says both already.
	msg := a.redact(strings.ReplaceAll(oneLine(err.Error()), "stalk: ", ""))
	if last := a.cmd[strings.LastIndex(a.cmd, " ")+1:]; last != "" {
		msg = strings.TrimPrefix(msg, last+": ")
	}
	je := jsonError{Event: "error", Command: a.cmd}
	var ue *usageError
	var be *brokerError
	var te *timeoutError
	switch {
	case errors.Is(err, errInterrupted):
		je.Kind, je.ExitCode, msg = "interrupted", exitInterrupted, "interrupted"
	case errors.As(err, &ue):
		je.Kind, je.ExitCode = "usage", exitUsage
		if a.cmd != "" && !strings.Contains(msg, "--help") {
			msg += fmt.Sprintf(" (see 'stalk %s --help')", a.cmd)
		} else if a.cmd == "" && !strings.Contains(msg, "--help") {
			msg += " (see 'stalk --help')"
		}
	case errors.As(err, &be):
		je.Kind, je.ExitCode = "broker", exitBroker
	case errors.As(err, &te):
		je.Kind, je.ExitCode, je.ID, je.State = "timeout", exitTimeout, te.id, te.state
	case errors.Is(err, result.ErrTimeout):
		je.Kind, je.ExitCode = "timeout", exitTimeout
	default:
		je.Kind, je.ExitCode = "failed", exitFailed
	}
	fmt.Fprintf(a.stderr, "%s: %s\n", prefix, msg)
	if a.g.json {
		je.Message = msg
		a.jsonLine(je)
	}
	return je.ExitCode
}

// jsonLine writes one JSON line on stdout; it is safe to call from
// callbacks.
func (a *app) jsonLine(v any) {
	a.jsonOut.Lock()
	defer a.jsonOut.Unlock()
	_ = writeJSONLine(a.stdout, v)
}

// redact removes the broker passwords from a message, whatever form they
// took: escaped as in the URL, or decoded.
func (a *app) redact(msg string) string {
	for _, u := range brokerURLs(a.g.broker) {
		user, pw := credentials(u)
		if pw == "" {
			continue
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
	where := redactURLs(a.url())
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

// ---- the command tree -------------------------------------------------------

// rootCommand builds the command tree for one invocation.
func (a *app) rootCommand() *cobra.Command {
	var showVersion bool
	root := &cobra.Command{
		Use:   "stalk",
		Short: "Send Celery tasks over RabbitMQ, follow their results, and control the workers",
		Long: `stalk sends Celery tasks over RabbitMQ and awaits their results, and speaks
Celery's remote control: the commands a Celery user knows from 'celery call',
'celery inspect', 'celery control', 'celery status', 'celery purge' and
'celery events', from one static binary, with exit codes scripts can test.`,
		Example: `  stalk call tasks.add 2 3
  stalk call tasks.add -a '[2, 3]' -q reports -t 30
  stalk chain 'tasks.add 1 2' 'tasks.mul 10'
  stalk result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --wait
  stalk status
  stalk inspect active
  stalk control rate_limit tasks.add 10/m
  stalk -j events --tasks --duration 10`,
		Args:              cobra.ArbitraryArgs,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			a.cmd = strings.TrimPrefix(strings.TrimPrefix(cmd.CommandPath(), "stalk"), " ")
			if isCompletion(cmd) {
				return nil
			}
			return a.setup()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if showVersion {
				return a.printVersion()
			}
			if len(args) == 0 {
				cmd.SetOut(a.stderr)
				_ = cmd.Usage()
				return exitCode(exitUsage)
			}
			name := restoreArg(args[0])
			msg := fmt.Sprintf("unknown command %q", name)
			if s := cmd.SuggestionsFor(name); len(s) > 0 {
				msg += fmt.Sprintf("; did you mean %q?", s[0])
			}
			return usagef("%s (run 'stalk --help' for the list of commands)", msg)
		},
	}
	root.SuggestionsMinimumDistance = 2
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%s", err) })
	pf := root.PersistentFlags()
	pf.VarP((*brokerFlag)(&a.g.broker), "broker", "b", "broker `URL` (amqp:// or amqps://; several separated by \";\" to fail over); $STALK_BROKER_URL or $CELERY_BROKER_URL")
	pf.BoolVarP(&a.g.json, "json", "j", a.g.json, "machine-readable output: one JSON object per line on stdout, errors included")
	pf.StringVar(&a.g.logLevel, "log-level", a.g.logLevel, "library log `level` on stderr: debug, info, warn, error or disabled")
	pf.Var(newSeconds(&a.g.connectTimeout, a.g.connectTimeout), "connect-timeout", "give up connecting to the broker after this many `seconds` (or a duration: 500ms, 1m)")
	root.Flags().BoolVar(&showVersion, "version", false, "print stalk's version and build and exit")
	_ = root.RegisterFlagCompletionFunc("log-level", fixedCompletion("debug", "info", "warn", "error", "disabled"))

	root.AddGroup(
		&cobra.Group{ID: "tasks", Title: "Tasks:"},
		&cobra.Group{ID: "workers", Title: "Workers:"},
		&cobra.Group{ID: "broker", Title: "Broker and events:"},
	)
	for _, c := range []*cobra.Command{a.callCommand(), a.chainCommand(), a.groupCommand(), a.applyCommand(), a.resultCommand(), a.graphCommand(), a.revokeCommand()} {
		c.GroupID = "tasks"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{a.statusCommand(), a.pingCommand(), a.inspectCommand(), a.controlCommand()} {
		c.GroupID = "workers"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{a.purgeCommand(), a.eventsCommand()} {
		c.GroupID = "broker"
		root.AddCommand(c)
	}
	root.AddCommand(a.completionCommand(root))
	root.SetHelpCommandGroupID("")
	setHelp(root)
	return root
}

// isCompletion reports whether cmd is cobra's completion machinery, which
// needs no broker.
func isCompletion(cmd *cobra.Command) bool {
	for c := cmd; c != nil; c = c.Parent() {
		switch c.Name() {
		case "completion", cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd, "help":
			return true
		}
	}
	return false
}

// fixedCompletion completes a flag or argument from a fixed list.
func fixedCompletion(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// completionCommand prints a shell completion script, made by cobra from
// the command tree: commands, flags, inspect and control methods, and the
// values of --queue-type, --mode and the like.
func (a *app) completionCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "Print a shell completion script",
		Long: `Print the completion script for the given shell on stdout. Load it for this
session, or install it for every session:

  bash:  source <(stalk completion bash)
         stalk completion bash > /etc/bash_completion.d/stalk
  zsh:   source <(stalk completion zsh)
         stalk completion zsh > "${fpath[1]}/_stalk"
  fish:  stalk completion fish | source
         stalk completion fish > ~/.config/fish/completions/stalk.fish

The bash script needs the bash-completion package.`,
		Example: `  source <(stalk completion bash)
  stalk completion zsh > "${fpath[1]}/_stalk"`,
		ValidArgs: []string{"bash", "zsh", "fish", "powershell"},
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("give one shell: bash, zsh, fish or powershell")
			}
			switch args[0] {
			case "bash", "zsh", "fish", "powershell":
				return nil
			}
			return usagef("no completion for shell %q: give bash, zsh, fish or powershell", args[0])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.stdout)
			case "fish":
				return root.GenFishCompletion(a.stdout, true)
			default:
				return root.GenPowerShellCompletionWithDesc(a.stdout)
			}
		},
	}
}
