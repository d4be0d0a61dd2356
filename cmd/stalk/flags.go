package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// secondsValue is a duration flag that takes bare seconds, as Celery's
// "-t 5" does ("5", "0.5"), or a Go duration ("500ms", "1m30s"). It is
// never negative.
type secondsValue struct{ d *time.Duration }

func newSeconds(d *time.Duration, def time.Duration) *secondsValue {
	*d = def
	return &secondsValue{d: d}
}

func (s *secondsValue) Set(v string) error {
	d, err := parseDuration(v)
	if err != nil {
		return err
	}
	*s.d = d
	return nil
}

func (s *secondsValue) Type() string { return "seconds" }

func (s *secondsValue) String() string {
	if s == nil || s.d == nil || *s.d == 0 {
		return "0"
	}
	d := *s.d
	if d%time.Second == 0 && d < time.Minute {
		return strconv.FormatInt(int64(d/time.Second), 10)
	}
	return d.String()
}

// parseDuration reads seconds ("10", "1.5") or a Go duration ("10s",
// "1m30s"); negative values are refused.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 || f > 1e9 {
			return 0, fmt.Errorf("%s is out of range", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("give seconds (10, 1.5) or a duration (30s, 2m)")
	}
	if d < 0 {
		return 0, fmt.Errorf("%s is negative", s)
	}
	return d, nil
}

// secondsFlag registers a seconds flag on fs.
func secondsFlag(fs *pflag.FlagSet, d *time.Duration, name, short string, def time.Duration, usage string) {
	fs.VarP(newSeconds(d, def), name, short, usage)
}

// ---- negative numbers as arguments -----------------------------------------

// negMark hides a negative number from pflag, which would read "-7" as
// the shorthand flag -7; restoreArg takes it off again.
const negMark = "\x00"

// protectNegatives marks the arguments that are negative numbers and not
// the value of a flag before them, so that "stalk call tasks.add -3 4"
// passes -3 as a task argument. Everything after "--" is left as it is.
func protectNegatives(root *cobra.Command, args []string) []string {
	cmd, _, err := root.Find(args)
	if err != nil || cmd == nil {
		cmd = root
	}
	fs := pflag.NewFlagSet("all", pflag.ContinueOnError)
	fs.AddFlagSet(cmd.Flags())
	fs.AddFlagSet(cmd.InheritedFlags())
	takesValue := func(f *pflag.Flag) bool { return f != nil && f.NoOptDefVal == "" }
	out := append([]string(nil), args...)
	for i := 0; i < len(out); i++ {
		a := out[i]
		switch {
		case a == "--":
			return out
		case isNegativeNumber(a):
			out[i] = negMark + a
		case strings.HasPrefix(a, "--") && !strings.Contains(a, "="):
			if takesValue(fs.Lookup(a[2:])) {
				i++
			}
		case len(a) == 2 && a[0] == '-':
			if takesValue(fs.ShorthandLookup(a[1:])) {
				i++
			}
		}
	}
	return out
}

func restoreArg(s string) string { return strings.TrimPrefix(s, negMark) }

func restoreArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = restoreArg(a)
	}
	return out
}

func isNegativeNumber(s string) bool {
	if len(s) < 2 || s[0] != '-' {
		return false
	}
	if s[1] >= '0' && s[1] <= '9' || s[1] == '.' {
		_, err := strconv.ParseFloat(s, 64)
		return err == nil || strings.Trim(s[1:], "0123456789") == ""
	}
	return false
}

// runE wraps a command's function: it restores protected arguments.
func runE(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return fn(cmd, restoreArgs(args))
	}
}

// ---- key=value flags ---------------------------------------------------------

// parsePairs reads "key=value" items; the value is JSON when it parses as
// JSON, else a string (so stamp=a and n=3 both work).
func parsePairs(flagName string, items []string, jsonValues bool) (map[string]any, []string, error) {
	out := make(map[string]any, len(items))
	var order []string
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, nil, usagef("--%s %q: want key=value", flagName, it)
		}
		var val any = v
		if jsonValues {
			if j, err := parseJSON(v); err == nil {
				val = nativeNumbers(j)
			}
		}
		if _, seen := out[k]; !seen {
			order = append(order, k)
		}
		out[k] = val
	}
	return out, order, nil
}

// ---- help ----------------------------------------------------------------------

// flagGroup is the annotation that puts a flag under a heading in help,
// as Celery's help_group does.
const flagGroup = "stalk_group"

// group puts the named flags of fs under heading in help.
func group(fs *pflag.FlagSet, heading string, names ...string) {
	for _, n := range names {
		if fs.Lookup(n) == nil {
			panic("group: no flag " + n)
		}
		_ = fs.SetAnnotation(n, flagGroup, []string{heading})
	}
}

// flagSections renders a command's local flags by group, then the global
// ones.
func flagSections(c *cobra.Command) string {
	var b strings.Builder
	groups := map[string]*pflag.FlagSet{}
	var order []string
	c.LocalFlags().VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		h := "Flags"
		if g := f.Annotations[flagGroup]; len(g) > 0 {
			h = g[0]
		}
		fs, ok := groups[h]
		if !ok {
			fs = pflag.NewFlagSet(h, pflag.ContinueOnError)
			fs.SortFlags = false
			groups[h] = fs
			order = append(order, h)
		}
		fs.AddFlag(f)
	})
	// "Flags" (ungrouped) last among the command's own.
	sort.SliceStable(order, func(i, j int) bool { return order[j] == "Flags" && order[i] != "Flags" })
	for _, h := range order {
		fmt.Fprintf(&b, "\n%s:\n%s", h, groups[h].FlagUsagesWrapped(100))
	}
	if inh := c.InheritedFlags(); inh.HasAvailableFlags() {
		fmt.Fprintf(&b, "\nGlobal flags:\n%s", inh.FlagUsagesWrapped(100))
	}
	return b.String()
}

const usageTemplate = `Usage:{{if and .HasAvailableSubCommands .HasParent}}
  {{.UseLine}}{{else if .HasAvailableSubCommands}}
  {{.CommandPath}} [flags] COMMAND [ARG...]{{else if .Runnable}}
  {{.UseLine}}{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasAvailableSubCommands}}{{$cmds := .Commands}}{{if eq (len .Groups) 0}}

{{if or (eq .Name "inspect") (eq .Name "control")}}Methods{{else}}Commands{{end}}:{{range $cmds}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{else}}{{range $group := .Groups}}

{{.Title}}{{range $cmds}}{{if (and (eq .GroupID $group.ID) (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if not .AllChildCommandsHaveGroup}}

Other commands:{{range $cmds}}{{if (and (eq .GroupID "") (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{end}}{{end}}
{{flagSections .}}{{if .HasExample}}
Examples:
{{.Example}}
{{end}}{{if not .HasParent}}{{rootFooter}}{{end}}{{if .HasAvailableSubCommands}}
Run '{{.CommandPath}} {{if .HasParent}}{{if or (eq .Name "inspect") (eq .Name "control")}}METHOD{{else}}SHELL{{end}}{{else}}COMMAND{{end}} --help' for more.{{end}}
`

const helpTemplate = `{{with (or .Long .Short)}}{{. | trimTrailingWhitespaces}}

{{end}}{{if or .Runnable .HasSubCommands}}{{.UsageString}}{{end}}`

// rootFooter is the end of 'stalk --help': the environment and the exit
// codes.
const rootFooter = `
Environment (each is the default of a flag, which wins):
  STALK_BROKER_URL, CELERY_BROKER_URL  --broker
  STALK_DEFAULT_QUEUE                  --queue (call, chain, group, apply) and purge's default queue
  STALK_DEFAULT_QUEUE_TYPE             --queue-type: classic or quorum
  STALK_DEFAULT_EXCHANGE_TYPE          --exchange-type: direct, topic, fanout or headers
  STALK_DECLARE_QUEUES                 false: --no-declare
  STALK_DELAYED_DELIVERY               --delayed-delivery: auto, off or required
  STALK_REPLY_MODE                     --mode: per-task or shared
  STALK_RESULT_EXPIRES                 --result-expires
  STALK_REPLY_PREFIX                   --reply-prefix

Exit codes:
  0 success; 1 the task failed or was revoked, workers replied with an error
  or not at all, or purge was not confirmed; 2 usage error; 3 timed out; 4
  broker unreachable or refused the connection; 130 interrupted. With --json
  an error is also one JSON object on stdout, the last line:
  {"event": "error", "error": "usage|failed|timeout|broker|interrupted",
   "exit_code": N, "message": "..."}.
`

func setHelp(root *cobra.Command) {
	cobra.AddTemplateFunc("flagSections", flagSections)
	cobra.AddTemplateFunc("rootFooter", func() string { return rootFooter })
	root.SetUsageTemplate(usageTemplate)
	root.SetHelpTemplate(helpTemplate)
	// Flags are listed in the order they are declared, grouped.
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().SortFlags = false
		c.PersistentFlags().SortFlags = false
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
