package result

import (
	"bytes"
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// The consumer decodes every result message, so the common shapes are
// decoded without encoding/json's reflection: scanMeta finds the fields'
// raw values in one pass over a body already known to be valid JSON, and
// the scalar results and empty children Celery sends most are read
// directly. Anything else takes encoding/json's path.

// scanMeta fills w with the raw values of body's top-level keys, as
// json.Unmarshal into a wireMeta would (case-insensitive key match, the
// last duplicate wins). It reports false, leaving the work to
// json.Unmarshal, for anything but a valid JSON object whose keys have no
// escapes.
func scanMeta(body []byte, w *wireMeta) bool {
	if !useScan || !json.Valid(body) {
		return false
	}
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return false
	}
	i++
	for {
		i = skipSpace(body, i)
		if body[i] == '}' {
			return true
		}
		if body[i] == ',' {
			i = skipSpace(body, i+1)
		}
		// A key: valid JSON guarantees the quotes.
		end := i + 1
		for body[end] != '"' {
			if body[end] == '\\' {
				return false
			}
			end++
		}
		key := body[i+1 : end]
		i = skipSpace(body, end+1) // at ':'
		i = skipSpace(body, i+1)
		vend := skipValue(body, i)
		if f := w.field(key); f != nil {
			*f = body[i:vend]
		}
		i = vend
	}
}

func (w *wireMeta) field(key []byte) *json.RawMessage {
	k := string(key) // no allocation: a conversion used only for comparison
	switch {
	case strings.EqualFold(k, "task_id"):
		return &w.TaskID
	case strings.EqualFold(k, "status"):
		return &w.Status
	case strings.EqualFold(k, "result"):
		return &w.Result
	case strings.EqualFold(k, "traceback"):
		return &w.Traceback
	case strings.EqualFold(k, "children"):
		return &w.Children
	case strings.EqualFold(k, "date_done"):
		return &w.DateDone
	case strings.EqualFold(k, "name"):
		return &w.Name
	case strings.EqualFold(k, "args"):
		return &w.Args
	case strings.EqualFold(k, "kwargs"):
		return &w.Kwargs
	case strings.EqualFold(k, "worker"):
		return &w.Worker
	case strings.EqualFold(k, "retries"):
		return &w.Retries
	case strings.EqualFold(k, "queue"):
		return &w.Queue
	case strings.EqualFold(k, "group_id"):
		return &w.GroupID
	case strings.EqualFold(k, "parent_id"):
		return &w.ParentID
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the end of the valid JSON value that starts at i.
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

// skipString returns the end of the JSON string that starts at i.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// plainString reads a JSON string without escapes; ok is false for
// anything else.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || bytes.IndexByte(raw, '\\') >= 0 || !utf8.Valid(raw) {
		return "", false
	}
	return string(raw[1 : len(raw)-1]), true
}

// wireState returns the State a raw status names, without allocating for
// Celery's built-in states.
func wireState(raw []byte) (State, bool) {
	if len(raw) < 2 || raw[0] != '"' || bytes.IndexByte(raw, '\\') >= 0 || !utf8.Valid(raw) {
		s, ok := optString(raw)
		return State(s), ok
	}
	switch s := raw[1 : len(raw)-1]; string(s) {
	case "SUCCESS":
		return Success, true
	case "FAILURE":
		return Failure, true
	case "STARTED":
		return Started, true
	case "RETRY":
		return Retry, true
	case "REVOKED":
		return Revoked, true
	default:
		return State(s), true
	}
}

// useScan is off only in the test that compares the two paths.
var useScan = true

// emptyList is what an empty children list decodes to; it is never
// written to (appending to it allocates a new array).
var emptyList = []any{}

// quickJSON decodes the common scalar results, as DecodeJSON would;
// ok is false for anything else.
func quickJSON(raw []byte) (any, bool) {
	switch string(raw) {
	case "null":
		return nil, true
	case "true":
		return true, true
	case "false":
		return false, true
	case "[]":
		return emptyList, true
	}
	if s, ok := plainString(raw); ok {
		return s, true
	}
	if n, ok := smallInt(raw); ok {
		return n, true
	}
	return nil, false
}

// smallInt parses an integer of up to 18 digits.
func smallInt(raw []byte) (int64, bool) {
	neg := len(raw) > 0 && raw[0] == '-'
	digits := raw
	if neg {
		digits = raw[1:]
	}
	if len(digits) == 0 || len(digits) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}
