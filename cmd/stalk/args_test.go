package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseTaskArgs(t *testing.T) {
	big30, _ := new(big.Int).SetString("123456789012345678901234567890", 10)
	cases := []struct {
		in   []string
		want []any
	}{
		{[]string{"2", "3"}, []any{int64(2), int64(3)}},
		{[]string{"-3", "2.5", "true", "null"}, []any{int64(-3), 2.5, true, nil}},
		{[]string{`"quoted"`, "bare", "two words"}, []any{"quoted", "bare", "two words"}},
		{[]string{"123456789012345678901234567890"}, []any{big30}},
		{[]string{`[1, {"a": 2}]`}, []any{[]any{int64(1), map[string]any{"a": int64(2)}}}},
		{[]string{""}, []any{""}},
		{nil, []any{}},
	}
	for _, c := range cases {
		got, err := parseTaskArgs(c.in)
		require.NoError(t, err, c.in)
		assert.Equal(t, c.want, got, c.in)
	}
}

func TestParseTaskArgsRejectsBrokenJSON(t *testing.T) {
	for _, in := range []string{`{"a": 1`, `[1, 2`, `"unterminated`, `12abc`, `{bad}`, `[1] trailing`} {
		_, err := parseTaskArgs([]string{in})
		var ue *usageError
		require.True(t, errors.As(err, &ue), "%q: %v", in, err)
		assert.Contains(t, err.Error(), "argument 1", in)
	}
}

func TestParseKwargs(t *testing.T) {
	m, err := parseKwargs(`{"x": 1, "big": 9007199254740993, "s": "t"}`)
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"x": int64(1), "big": int64(9007199254740993), "s": "t"}, m)

	m, err = parseKwargs("")
	require.NoError(t, err)
	assert.Nil(t, m)

	for _, bad := range []string{`[1]`, `{"x":`, `7`, `x=1`} {
		_, err := parseKwargs(bad)
		var ue *usageError
		require.True(t, errors.As(err, &ue), bad)
		assert.Contains(t, err.Error(), "--kwargs")
	}
}

func TestParseSecondsAndTimes(t *testing.T) {
	d, err := parseSeconds("countdown", "1.5")
	require.NoError(t, err)
	assert.Equal(t, 1500*time.Millisecond, d)
	d, err = parseSeconds("countdown", "2m")
	require.NoError(t, err)
	assert.Equal(t, 2*time.Minute, d)
	for _, bad := range []string{"-1", "soon", "-3s", ""} {
		_, err := parseSeconds("countdown", bad)
		assert.Error(t, err, bad)
	}

	tm, err := parseTime("eta", "2025-06-01T12:00:00Z")
	require.NoError(t, err)
	assert.True(t, tm.Equal(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)))
	tm, err = parseTime("eta", "2025-06-01 12:00")
	require.NoError(t, err)
	assert.Equal(t, time.Local, tm.Location())
	_, err = parseTime("eta", "tomorrow")
	assert.ErrorContains(t, err, "RFC 3339")

	rel, abs, err := parseWhen("expires", "60")
	require.NoError(t, err)
	assert.Equal(t, time.Minute, rel)
	assert.True(t, abs.IsZero())
	rel, abs, err = parseWhen("expires", "2030-01-01T00:00:00+02:00")
	require.NoError(t, err)
	assert.Zero(t, rel)
	assert.Equal(t, 2030, abs.Year())
	_, _, err = parseWhen("expires", "later")
	assert.ErrorContains(t, err, "--expires")
}

func TestParseInterspersed(t *testing.T) {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	q := fs.String("queue", "", "")
	noWait := fs.Bool("no-wait", false, "")
	timeout := fs.Duration("timeout", 0, "")
	pos, err := parseInterspersed(fs, []string{"tasks.add", "-3", "--queue", "q1", "4", "--no-wait", "--timeout=2s", "--", "--literal"})
	require.NoError(t, err)
	assert.Equal(t, []string{"tasks.add", "-3", "4", "--literal"}, pos)
	assert.Equal(t, "q1", *q)
	assert.True(t, *noWait)
	assert.Equal(t, 2*time.Second, *timeout)

	_, err = parseInterspersed(fs, []string{"x", "--bogus"})
	assert.ErrorContains(t, err, "bogus")
	_, err = parseInterspersed(fs, []string{"x", "--queue"})
	assert.ErrorContains(t, err, "needs a value")
	_, err = parseInterspersed(fs, []string{"--help"})
	assert.ErrorIs(t, err, flag.ErrHelp)
}

func TestNormalizeBrokerURL(t *testing.T) {
	cases := map[string]string{
		"amqp://guest:guest@localhost:5672//":     "amqp://guest:guest@localhost:5672/",
		"amqp://guest:guest@localhost:5672/":      "amqp://guest:guest@localhost:5672/",
		"amqp://u:p@rabbit:5672/prod":             "amqp://u:p@rabbit:5672/prod",
		"amqp://u:p@rabbit:5672/%2Fprod":          "amqp://u:p@rabbit:5672/%2Fprod",
		"amqps://u:p@rabbit:5671//":               "amqps://u:p@rabbit:5671/",
		"amqp://localhost":                        "amqp://localhost",
		" amqp://guest:guest@localhost:5672// \n": "amqp://guest:guest@localhost:5672/",
	}
	for in, want := range cases {
		got, err := normalizeBrokerURL(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "redis://localhost:6379/0", "localhost:5672", "amqp:///vhost", "amqp://u:p@[::1"} {
		_, err := normalizeBrokerURL(bad)
		var ue *usageError
		require.True(t, errors.As(err, &ue), bad)
		assert.NotContains(t, err.Error(), ":p@", bad)
	}
}

func TestDefaultBrokerURL(t *testing.T) {
	env := map[string]string{}
	get := func(k string) string { return env[k] }
	assert.Equal(t, defaultBroker, defaultBrokerURL(get))
	env["CELERY_BROKER_URL"] = "amqp://c@h//"
	assert.Equal(t, "amqp://c@h//", defaultBrokerURL(get))
	env["STALK_BROKER_URL"] = "amqp://s@h//"
	assert.Equal(t, "amqp://s@h//", defaultBrokerURL(get))
}

// runCLI runs the CLI in-process with a fake environment.
func runCLI(t *testing.T, envVars map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{
		stdout: &out, stderr: &errb,
		getenv: func(k string) string { return envVars[k] },
		width:  func() int { return 80 },
		now:    time.Now,
	}
	code = run(context.Background(), args, e)
	return code, out.String(), errb.String()
}

func TestUsageErrorsExit2WithOneLine(t *testing.T) {
	cases := map[string][]string{
		"unknown command":       {"cal"},
		"no command":            {},
		"unknown flag":          {"call", "tasks.add", "--bogus"},
		"bad json arg":          {"call", "tasks.add", `{"a":`},
		"bad kwargs":            {"call", "tasks.add", "--kwargs", "[1]"},
		"missing task":          {"call"},
		"bad mode":              {"call", "tasks.add", "--mode", "fast"},
		"countdown and eta":     {"call", "t", "--countdown", "1", "--eta", "2030-01-01T00:00:00Z"},
		"bad log level":         {"--log-level", "loud", "ping"},
		"not amqp":              {"--broker", "redis://localhost", "ping"},
		"result without id":     {"result"},
		"revoke without id":     {"revoke"},
		"signal without term":   {"revoke", "x", "--signal", "KILL"},
		"inspect what":          {"inspect", "everything"},
		"events with args":      {"events", "now"},
		"bad connect timeout":   {"--connect-timeout", "0s", "ping"},
		"global flag bad value": {"--connect-timeout", "soon", "ping"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, nil, args...)
			assert.Equal(t, exitUsage, code, stderr)
			assert.Empty(t, stdout)
			if len(args) > 0 {
				assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
			}
		})
	}
}

func TestUnknownCommandSuggests(t *testing.T) {
	_, _, stderr := runCLI(t, nil, "revok")
	assert.Contains(t, stderr, `did you mean "revoke"`)
	assert.Contains(t, stderr, "stalk --help")
}

func TestHelpOnEveryCommand(t *testing.T) {
	code, stdout, _ := runCLI(t, nil, "--help")
	require.Equal(t, exitOK, code)
	for _, c := range commands() {
		assert.Contains(t, stdout, "  "+c.name+" ")
		code, out, errOut := runCLI(t, nil, c.name, "--help")
		assert.Equal(t, exitOK, code, c.name)
		assert.Empty(t, errOut, c.name)
		assert.Contains(t, out, "Usage:\n  stalk "+c.name, c.name)
		assert.Contains(t, out, "Examples:", c.name)
		assert.Contains(t, out, "--broker", c.name)
		code, out2, _ := runCLI(t, nil, "help", c.name)
		assert.Equal(t, exitOK, code)
		assert.Equal(t, out, out2)
	}
}

func TestPasswordNeverPrinted(t *testing.T) {
	envVars := map[string]string{"STALK_BROKER_URL": "amqp://alice:s3cr3t-pass@127.0.0.1:1//"}
	for _, args := range [][]string{{"--help"}, {"call", "--help"}} {
		code, stdout, stderr := runCLI(t, envVars, args...)
		assert.Equal(t, exitOK, code)
		assert.NotContains(t, stdout+stderr, "s3cr3t", args)
	}
	// Nothing listens on port 1: the connection fails, in one line.
	for _, args := range [][]string{
		{"--connect-timeout", "300ms", "ping"},
		{"--broker", "amqp://bob:hunter2hunter2@127.0.0.1:1//", "--connect-timeout", "300ms", "call", "t"},
		{"--connect-timeout", "300ms", "events"},
	} {
		code, stdout, stderr := runCLI(t, envVars, args...)
		assert.Equal(t, exitBroker, code, stderr)
		assert.NotContains(t, stdout+stderr, "s3cr3t", args)
		assert.NotContains(t, stdout+stderr, "hunter2", args)
		assert.Contains(t, stderr, "xxxxx@127.0.0.1:1")
		assert.Equal(t, 1, strings.Count(stderr, "\n"), stderr)
	}
}

func TestRedact(t *testing.T) {
	a := &app{g: globals{broker: "amqp://user:p%40ss word@h:5672//"}}
	msg := a.redact("dial amqp://user:p%40ss word@h:5672/ failed for p@ss word")
	assert.NotContains(t, msg, "p%40ss")
	assert.NotContains(t, msg, "p@ss word")
}

func TestEditDistance(t *testing.T) {
	assert.Equal(t, 0, editDistance("call", "call"))
	assert.Equal(t, 1, editDistance("cal", "call"))
	assert.Equal(t, "inspect", suggest("inpsect"))
	assert.Equal(t, "", suggest("zzzzzzzz"))
}
