package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

func TestNegativeNumbersAreArguments(t *testing.T) {
	a := &app{env: &env{getenv: func(string) string { return "" }}}
	root := a.rootCommand()
	in := []string{"call", "tasks.add", "-3", "--priority", "-1", "-q", "q1", "-.5", "--no-wait", "-t=2", "--", "-7"}
	got := protectNegatives(root, in)
	assert.Equal(t, []string{"call", "tasks.add", negMark + "-3", "--priority", "-1", "-q", "q1", negMark + "-.5", "--no-wait", "-t=2", "--", "-7"}, got,
		"a flag's value and what follows -- are left alone")
	assert.Equal(t, []string{"-3", "x"}, restoreArgs([]string{negMark + "-3", "x"}))
	assert.False(t, isNegativeNumber("-t"))
	assert.False(t, isNegativeNumber("-1x"))
	assert.True(t, isNegativeNumber("-12345678901234567890123"))
}

func TestDurationsTakeSecondsOrGoDurations(t *testing.T) {
	for in, want := range map[string]time.Duration{"5": 5 * time.Second, "0.5": 500 * time.Millisecond, "2m": 2 * time.Minute, "1m30s": 90 * time.Second, "0": 0} {
		d, err := parseDuration(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, d, in)
	}
	for _, bad := range []string{"-1", "soon", "-2s", ""} {
		_, err := parseDuration(bad)
		assert.Error(t, err, bad)
	}
	var d time.Duration
	v := newSeconds(&d, time.Second)
	assert.Equal(t, "1", v.String())
	require.NoError(t, v.Set("2.5"))
	assert.Equal(t, "2.5s", v.String())
}

func TestBrokerURLs(t *testing.T) {
	for _, ok := range []string{
		"amqp://guest:guest@localhost:5672//", "amqp://u:p@rabbit:5672/prod", "amqps://u:p@rabbit:5671//", "amqp://localhost",
		" amqp://guest:guest@localhost:5672// \n", "amqp://a:pw1@h1//;amqp://b:pw2@h2//", "amqp://h1;amqp://h2;",
	} {
		assert.NoError(t, checkBrokerURL(ok), ok)
	}
	for _, bad := range []string{"", ";", "redis://localhost:6379/0", "localhost:5672", "amqp:///vhost", "amqp://u:p@[::1", "amqp://h1;redis://u:p@h2"} {
		err := checkBrokerURL(bad)
		var ue *usageError
		require.True(t, errors.As(err, &ue), bad)
		assert.NotContains(t, err.Error(), ":p@", bad)
	}
	assert.Equal(t, "amqp://a:xxxxx@h1//;amqp://b:xxxxx@h2//", redactURLs("amqp://a:pw1@h1//; amqp://b:pw2@h2//"))
	a := &app{g: globals{broker: "amqp://a:first-secret@h1//;amqp://b:second-secret@h2//"}}
	assert.Equal(t, "dial h1: xxxxx, h2: xxxxx", a.redact("dial h1: first-secret, h2: second-secret"))
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
		stdin:  strings.NewReader(""),
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
		"unknown command":         {"cal"},
		"no command":              {},
		"unknown flag":            {"call", "tasks.add", "--bogus"},
		"unknown shorthand":       {"call", "tasks.add", "-z"},
		"bad json arg":            {"call", "tasks.add", `{"a":`},
		"bad kwargs":              {"call", "tasks.add", "--kwargs", "[1]"},
		"bad args":                {"call", "tasks.add", "-a", "{}"},
		"args twice":              {"call", "tasks.add", "1", "-a", "[2]"},
		"missing task":            {"call"},
		"bad mode":                {"call", "tasks.add", "--mode", "fast"},
		"shared no-wait":          {"call", "tasks.add", "--mode", "shared", "--no-wait"},
		"countdown and eta":       {"call", "t", "--countdown", "1", "--eta", "2030-01-01T00:00:00Z"},
		"bad timeout":             {"call", "t", "-t", "soon"},
		"negative timeout":        {"call", "t", "--timeout", "-1"},
		"bad priority":            {"call", "t", "--priority", "300"},
		"bad stamp":               {"call", "t", "--stamp", "novalue"},
		"bad queue type":          {"call", "t", "--queue-type", "lazy"},
		"bad exchange type":       {"call", "t", "--exchange-type", "x"},
		"bad delayed":             {"call", "t", "--delayed-delivery", "later"},
		"soft over hard":          {"call", "t", "--time-limit", "1", "--soft-time-limit", "2"},
		"bad log level":           {"--log-level", "loud", "ping"},
		"not amqp":                {"--broker", "redis://localhost", "ping"},
		"result without id":       {"result"},
		"revoke without id":       {"revoke"},
		"signal without term":     {"revoke", "x", "--signal", "KILL"},
		"bad signal":              {"revoke", "x", "--terminate", "--signal", "SIGFOO"},
		"inspect what":            {"inspect", "everything"},
		"inspect no method":       {"inspect"},
		"inspect extra":           {"inspect", "active", "x"},
		"control what":            {"control", "frobnicate"},
		"rate limit bad":          {"control", "rate_limit", "tasks.add", "fast"},
		"rate limit args":         {"control", "rate_limit", "tasks.add"},
		"time limit bad":          {"control", "time_limit", "tasks.add", "soon"},
		"pool grow bad":           {"control", "pool_grow", "0"},
		"autoscale bad":           {"control", "autoscale", "1", "5"},
		"terminate bad signal":    {"control", "terminate", "SIGFOO", "id"},
		"events with args":        {"events", "now"},
		"bad connect timeout":     {"--connect-timeout", "0s", "ping"},
		"global flag bad value":   {"--connect-timeout", "soon", "ping"},
		"chain no steps":          {"chain"},
		"chain bad step":          {"chain", "tasks.add 1 {"},
		"chain step option":       {"chain", "tasks.add 1 --bogus"},
		"chain unterminated":      {"chain", "tasks.echo 'x"},
		"apply bad json":          {"apply", "{"},
		"apply unknown key":       {"apply", `{"task": "t", "optoins": {}}`},
		"apply chord":             {"apply", `{"chain": [{"group": [{"task": "a"}]}, {"task": "b"}]}`},
		"apply two kinds":         {"apply", `{"task": "t", "group": []}`},
		"apply bad option":        {"apply", `{"task": "t", "options": {"priority": "high"}}`},
		"purge everything gone":   {"purge", "-Q", "a", "-X", "a"},
		"env queue type":          {"call", "t"}, // with STALK_DEFAULT_QUEUE_TYPE below
		"completion without name": {"completion", "tcsh"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			envVars := map[string]string{}
			if name == "env queue type" {
				envVars["STALK_DEFAULT_QUEUE_TYPE"] = "lazy"
			}
			code, stdout, stderr := runCLI(t, envVars, args...)
			assert.Equal(t, exitUsage, code, stderr)
			assert.Empty(t, stdout)
			if len(args) > 0 {
				assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
				assert.NotContains(t, stderr, "stalk: stalk", "one prefix")
			}
			if name == "env queue type" {
				assert.Contains(t, stderr, "$STALK_DEFAULT_QUEUE_TYPE")
			}
		})
	}
}

func TestJSONErrors(t *testing.T) {
	code, stdout, stderr := runCLI(t, nil, "--json", "call", "tasks.add", "--bogus")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "unknown flag: --bogus")
	var e map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &e), stdout)
	assert.Equal(t, "error", e["event"])
	assert.Equal(t, "usage", e["error"])
	assert.Equal(t, float64(exitUsage), e["exit_code"])
	assert.Equal(t, "call", e["command"])
	assert.Contains(t, e["message"], "--bogus")

	// -j after the command, and an error before the flag is parsed.
	code, stdout, _ = runCLI(t, nil, "--connect-timeout", "soon", "ping", "-j")
	assert.Equal(t, exitUsage, code)
	require.NoError(t, json.Unmarshal([]byte(stdout), &e), stdout)
	assert.Equal(t, "usage", e["error"])

	code, stdout, _ = runCLI(t, nil, "-j", "--broker", "amqp://u:topsecret@127.0.0.1:1//", "--connect-timeout", "0.3", "status")
	assert.Equal(t, exitBroker, code)
	require.NoError(t, json.Unmarshal([]byte(stdout), &e), stdout)
	assert.Equal(t, "broker", e["error"])
	assert.NotContains(t, stdout, "topsecret")
}

func TestUnknownCommandSuggests(t *testing.T) {
	_, _, stderr := runCLI(t, nil, "revok")
	assert.Contains(t, stderr, `did you mean "revoke"`)
	assert.Contains(t, stderr, "stalk --help")
	_, _, stderr = runCLI(t, nil, "inpsect")
	assert.Contains(t, stderr, `did you mean "inspect"`)
}

func TestHelpOnEveryCommand(t *testing.T) {
	code, stdout, _ := runCLI(t, nil, "--help")
	require.Equal(t, exitOK, code)
	a := &app{env: &env{getenv: func(string) string { return "" }}}
	root := a.rootCommand()
	for _, c := range root.Commands() {
		if c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		assert.Contains(t, stdout, "  "+c.Name()+" ")
		code, out, errOut := runCLI(t, nil, c.Name(), "--help")
		assert.Equal(t, exitOK, code, c.Name())
		assert.Empty(t, errOut, c.Name())
		assert.Contains(t, out, "Usage:\n  stalk "+c.Name(), c.Name())
		assert.Contains(t, out, "Examples:", c.Name())
		assert.Contains(t, out, "--broker", c.Name())
		code, out2, _ := runCLI(t, nil, "help", c.Name())
		assert.Equal(t, exitOK, code)
		assert.Equal(t, out, out2)
		for _, sub := range c.Commands() {
			code, out, _ := runCLI(t, nil, c.Name(), sub.Name(), "--help")
			assert.Equal(t, exitOK, code, sub.CommandPath())
			assert.Contains(t, out, "Usage:\n  stalk "+c.Name()+" "+sub.Name(), sub.CommandPath())
		}
	}
	for _, m := range append(inspectMethods(), controlMethods()...) {
		assert.Contains(t, stdout+helpOf(t, "inspect")+helpOf(t, "control"), "  "+m.name+" ")
	}
}

func helpOf(t *testing.T, cmd string) string {
	_, out, _ := runCLI(t, nil, cmd, "--help")
	return out
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCLI(t, nil, "--version")
	assert.Equal(t, exitOK, code)
	assert.Regexp(t, `^stalk (\(devel\)|v\S+)( revision [0-9a-f]+.*)? \(go[0-9.]+.*\)\n$`, stdout)
	code, stdout, _ = runCLI(t, nil, "--json", "--version")
	assert.Equal(t, exitOK, code)
	var bi buildInfo
	require.NoError(t, json.Unmarshal([]byte(stdout), &bi))
	assert.NotEmpty(t, bi.Version)
	assert.Equal(t, "stalk v1.2.3 revision 0123456789ab, 2026-01-02T03:04:05Z, modified (go1.26.1)",
		buildInfo{Version: "v1.2.3", Revision: "0123456789abcdef", Time: "2026-01-02T03:04:05Z", Modified: true, Go: "go1.26.1"}.String())
}

func TestStepParsing(t *testing.T) {
	words, err := splitWords(`tasks.echo "two words" 'single \ quoted' a\ b -k '{"x": 1}'`)
	require.NoError(t, err)
	assert.Equal(t, []string{"tasks.echo", "two words", `single \ quoted`, "a b", "-k", `{"x": 1}`}, words)
	sig, err := parseStep(`tasks.add -3 4 --si -q math`)
	require.NoError(t, err)
	assert.Equal(t, "tasks.add", sig.Name())
	assert.True(t, sig.Immutable())
	for _, bad := range []string{"", "-k {}", "tasks.add -k", "tasks.add --what", `tasks.add "x`, "tasks.add {"} {
		_, err := parseStep(bad)
		assert.Error(t, err, bad)
	}
}

func TestCanvasJSON(t *testing.T) {
	for _, ok := range []string{
		`{"task": "tasks.add", "args": [1, 2]}`,
		`{"chain": [{"task": "tasks.add", "args": [1, 2]}, {"group": [{"task": "tasks.add", "args": [10]}, {"chain": [{"task": "a"}, {"task": "b"}]}]}]}`,
		`{"task": "t", "options": {"queue": "q", "priority": 3, "countdown": 5, "expires": "10m", "time_limit": 30, "headers": {"x": 1}}}`,
		// Celery's json.dumps(chain(add.s(1, 2), mul.s(3))):
		`{"task": "celery.chain", "args": [], "kwargs": {"tasks": [{"task": "tasks.add", "args": [1, 2], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}, {"task": "tasks.mul", "args": [3], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}]}, "options": {}, "subtask_type": "chain", "immutable": false}`,
	} {
		_, err := parseCanvasJSON([]byte(ok))
		assert.NoError(t, err, ok)
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
