package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// parseJSON decodes one JSON value exactly: numbers stay json.Number, so
// that large integers reach the worker unrounded, and trailing data is an
// error.
func parseJSON(s string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("unexpected data after the JSON value")
	}
	return v, nil
}

// parseTaskArgs reads the positional task arguments. Each is a JSON value
// (2, 2.5, true, null, "text", [1,2], {"a":1}). A bare word that is not
// valid JSON is taken as a string, so `stalk call tasks.echo hello` passes
// "hello". An argument that starts like JSON ({, [ or ") but does not parse
// is an error rather than a silent string: it is almost always a typo.
func parseTaskArgs(raw []string) ([]any, error) {
	out := make([]any, 0, len(raw))
	for i, s := range raw {
		v, err := parseJSON(s)
		if err == nil {
			out = append(out, nativeNumbers(v))
			continue
		}
		t := strings.TrimSpace(s)
		if t != "" && strings.ContainsRune("{[\"", rune(t[0])) {
			return nil, usagef("argument %d (%s) is not valid JSON: %v; fix it, or quote it as a JSON string to pass it as text", i+1, clip(s, 40), err)
		}
		if isNegativeNumber(t) || (t != "" && t[0] >= '0' && t[0] <= '9') {
			return nil, usagef("argument %d (%s) is not a valid JSON number; write it as a number, or as a JSON string (\"...\") to pass text", i+1, clip(s, 40))
		}
		out = append(out, s)
	}
	return out, nil
}

// parseKwargs reads -k/--kwargs, which must be a JSON object.
func parseKwargs(s string) (map[string]any, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	v, err := parseJSON(s)
	if err != nil {
		return nil, usagef("--kwargs %s is not valid JSON: %v; give an object such as '{\"x\": 1}'", clip(s, 40), err)
	}
	m, ok := nativeNumbers(v).(map[string]any)
	if !ok {
		return nil, usagef("--kwargs must be a JSON object such as '{\"x\": 1}', got %s", clip(s, 40))
	}
	return m, nil
}

// nativeNumbers replaces json.Number with int64, *big.Int (integers too
// large for int64, kept exact) or float64, so that the task's argsrepr
// header shows numbers as Python would, and the JSON body is unchanged.
func nativeNumbers(v any) any {
	switch t := v.(type) {
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		if b, ok := new(big.Int).SetString(t.String(), 10); ok {
			return b
		}
		if f, err := t.Float64(); err == nil {
			return f
		}
		return t
	case []any:
		for i := range t {
			t[i] = nativeNumbers(t[i])
		}
	case map[string]any:
		for k := range t {
			t[k] = nativeNumbers(t[k])
		}
	}
	return v
}

// parseSeconds reads a relative time for flag --flagName: seconds as a
// number ("10", "1.5", Celery's form) or a Go duration ("10s", "1m30s").
func parseSeconds(flagName, s string) (time.Duration, error) {
	d, err := parseDuration(s)
	if err != nil {
		return 0, usagef("--%s %q: %v", flagName, strings.TrimSpace(s), err)
	}
	return d, nil
}

// parseArgsArray reads -a/--args, Celery's JSON array of positional
// arguments.
func parseArgsArray(s string) ([]any, error) {
	v, err := parseJSON(s)
	if err != nil {
		return nil, usagef("--args %s is not valid JSON: %v; give an array such as '[2, 3]'", clip(s, 40), err)
	}
	l, ok := nativeNumbers(v).([]any)
	if !ok {
		return nil, usagef("--args must be a JSON array such as '[2, 3]', got %s", clip(s, 40))
	}
	return l, nil
}

// timeLayouts are the absolute time forms accepted, RFC 3339 first. Forms
// without a zone are local time.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04",
	"2006-01-02 15:04",
}

// parseTime reads an absolute time.
func parseTime(flagName, s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range timeLayouts {
		var t time.Time
		var err error
		if strings.Contains(l, "Z07") {
			t, err = time.Parse(l, s)
		} else {
			t, err = time.ParseInLocation(l, s, time.Local)
		}
		if err == nil {
			return t, nil
		}
	}
	return time.Time{}, usagef("--%s %q: give a time such as 2025-06-01T12:00:00Z (RFC 3339)", flagName, s)
}

// parseWhen reads a time that may be relative (seconds or a duration from
// now) or absolute (RFC 3339). Exactly one of rel and abs is set.
func parseWhen(flagName, s string) (rel time.Duration, abs time.Time, err error) {
	if d, derr := parseSeconds(flagName, s); derr == nil {
		return d, time.Time{}, nil
	}
	t, terr := parseTime(flagName, s)
	if terr != nil {
		return 0, time.Time{}, usagef("--%s %q: give seconds (60), a duration (10m) or a time (2025-06-01T12:00:00Z)", flagName, s)
	}
	return 0, t, nil
}

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		return strconv.Quote(string(r[:n]) + "…")
	}
	return strconv.Quote(s)
}

// writeJSONLine writes v as one line of JSON.
func writeJSONLine(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// rawOrNull returns raw, or JSON null when it is empty.
func rawOrNull(raw json.RawMessage) json.RawMessage {
	if len(bytes.TrimSpace(raw)) == 0 {
		return json.RawMessage("null")
	}
	return raw
}

// prettyJSON indents raw JSON for a terminal, and leaves it compact
// otherwise. Invalid input is returned unchanged.
func prettyJSON(raw json.RawMessage, indent bool) string {
	raw = rawOrNull(raw)
	var buf bytes.Buffer
	if indent {
		if err := json.Indent(&buf, raw, "", "  "); err == nil {
			return buf.String()
		}
		return string(raw)
	}
	if err := json.Compact(&buf, raw); err == nil {
		return buf.String()
	}
	return string(raw)
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	default:
		return d.Round(time.Second).String()
	}
}
