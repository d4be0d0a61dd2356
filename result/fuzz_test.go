package result

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"testing"
)

// seedBodies returns the result message bodies a real Celery 5.2.6 worker
// published (testdata/celery-5.2.6-results.jsonl, one body a line), plus a
// few hostile forms.
func seedBodies(f *testing.F) [][]byte {
	f.Helper()
	file, err := os.Open("testdata/celery-5.2.6-results.jsonl")
	if err != nil {
		f.Fatalf("seed corpus: %v", err)
	}
	defer file.Close()
	var out [][]byte
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) > 0 {
			out = append(out, append([]byte(nil), sc.Bytes()...))
		}
	}
	if err := sc.Err(); err != nil {
		f.Fatalf("seed corpus: %v", err)
	}
	if len(out) == 0 {
		f.Fatal("seed corpus is empty")
	}
	return append(out,
		[]byte(`{"task_id": 5, "status": "SUCCESS"}`),
		[]byte(`{"status": "SUCCESS", "result": 1}`),
		[]byte(`{"task_id": "x", "status": "BOGUS"}`),
		[]byte(`{"task_id": "x", "status": "SUCCESS", "result": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05.123456+00:00"}}`),
		[]byte(`{"task_id": "x", "status": "SUCCESS", "result": {"__type__": "bytes", "__value__": "!!"}}`),
		[]byte(`{"task_id": "x", "status": "SUCCESS", "result": 1180591620717411303424}`),
		[]byte(`{"task_id": "x", "status": "FAILURE", "result": {"exc_type": 1, "exc_message": {"a": 1}}}`),
		[]byte(`{"task_id": "x", "status": "SUCCESS", "children": {"not": "a list"}}`),
		[]byte(`[1, 2, 3]`),
		[]byte("\x1f\x8b\x08\x00"),
		[]byte(`{"task_id": "x", "status": "SUCCESS", "result": 1} trailing`),
	)
}

func FuzzDecodeMessage(f *testing.F) {
	types := []string{"application/json", "", "application/x-python-serialize", "application/x-yaml", "application/x-msgpack", "text/plain; charset=utf-8"}
	encs := []string{"utf-8", "", "gzip", "binary", "zlib"}
	for i, b := range seedBodies(f) {
		f.Add(types[i%len(types)], encs[i%len(encs)], b, 0)
		f.Add("application/json", "utf-8", b, 64)
	}
	f.Fuzz(func(t *testing.T, contentType, contentEncoding string, body []byte, limit int) {
		if limit < 0 || limit > 1<<20 {
			limit = 0
		}
		m, err := DecodeMessage(contentType, contentEncoding, body, DecodeOptions{MaxBodySize: limit})
		if err != nil {
			if m != nil {
				t.Fatalf("meta %v returned with error %v", m, err)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error is not a *DecodeError: %T", err)
			}
			_ = err.Error()
			return
		}
		if m.TaskID == "" {
			t.Fatal("decoded a message with an empty task_id")
		}
		if !validWireState(m.Status) {
			t.Fatalf("decoded an invalid status %q", m.Status)
		}
		// Everything a reader can do with a decoded message must be safe.
		_ = m.Err()
		_ = m.startedHostname()
		if te := m.Err(); te != nil {
			_ = te.Error()
			_ = te.Message()
		}
		_, _ = json.Marshal(toJSONCompatible(m.Result))
		e := NewEntry(m.TaskID)
		e.Deliver(m)
		e.Deliver(m)
	})
}

func FuzzDecodeJSON(f *testing.F) {
	for _, b := range seedBodies(f) {
		f.Add(b)
	}
	f.Add([]byte(`{"__type__": "decimal", "__value__": "1.000000000000000000001"}`))
	f.Add([]byte(`{"__type__": "decimal", "__value__": "NaN"}`))
	f.Add([]byte(`{"__type__": "decimal", "__value__": "00"}`))
	f.Add([]byte(`{"__type__": "uuid", "__value__": "not-a-uuid"}`))
	f.Add([]byte(`{"__type__": "date", "__value__": 7}`))
	f.Add([]byte(`{"__type__": "time", "__value__": "12:00:00"}`))
	f.Add([]byte(`{"__type__": "mystery", "__value__": [1, {"__type__": "bytes", "__value__": "aGk="}]}`))
	f.Add([]byte(`-0.0e-400`))
	f.Add([]byte(`99999999999999999999999999999999999999999`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := DecodeJSON(data)
		if err != nil {
			return
		}
		// The value must re-encode: GetInto relies on it. Python's NaN and
		// Infinity decode to floats JSON cannot carry; GetInto reports
		// them as an error instead.
		if hasNonFinite(v) {
			return
		}
		if _, err := json.Marshal(toJSONCompatible(v)); err != nil {
			t.Fatalf("decoded value does not re-encode: %v", err)
		}
	})
}

func FuzzTaskErrorFromMeta(f *testing.F) {
	for _, b := range seedBodies(f) {
		var w struct {
			Result json.RawMessage `json:"result"`
		}
		if json.Unmarshal(b, &w) == nil && len(w.Result) > 0 {
			f.Add("FAILURE", []byte(w.Result), "Traceback (most recent call last):\n")
		}
	}
	f.Add("REVOKED", []byte(`{"exc_type": "TaskRevokedError", "exc_message": ["terminated"], "exc_module": "celery.exceptions"}`), "")
	f.Add("RETRY", []byte(`{"exc_type": "RuntimeError", "exc_message": "not a list", "exc_module": "builtins"}`), "tb")
	f.Add("FAILURE", []byte(`{"exc_type": ["x"], "exc_message": null, "exc_module": {}}`), "")
	f.Add("REVOKED", []byte(`null`), "")
	f.Add("FAILURE", []byte(`"a bare string"`), "")
	f.Add("FAILURE", []byte(`{"exc_type": "E", "exc_message": [1, 2.5, "s", null, [1], {"k": 1}]}`), "")
	f.Fuzz(func(t *testing.T, status string, raw []byte, tb string) {
		v, err := DecodeJSON(raw)
		if err != nil {
			return
		}
		m := &Meta{TaskID: "t", Status: State(status), Result: v, RawResult: raw, Traceback: tb}
		te := m.Err()
		if !m.Status.IsException() {
			if te != nil {
				t.Fatalf("non-exception state %q gave an error", status)
			}
			return
		}
		if te == nil {
			t.Fatalf("exception state %q gave no error", status)
		}
		_ = te.Error()
		_ = te.Message()
		_ = te.QualifiedType()
		_ = errors.Is(te, ErrRevoked)
		_ = errors.Is(te, ErrTaskFailed)
		if m.Status == Revoked && !errors.Is(te, ErrRevoked) {
			t.Fatal("REVOKED does not satisfy ErrRevoked")
		}
	})
}

func hasNonFinite(v any) bool {
	switch t := v.(type) {
	case float64:
		return math.IsNaN(t) || math.IsInf(t, 0)
	case []any:
		for _, x := range t {
			if hasNonFinite(x) {
				return true
			}
		}
	case map[string]any:
		for _, x := range t {
			if hasNonFinite(x) {
				return true
			}
		}
	case Envelope:
		return hasNonFinite(t.Value)
	}
	return false
}

// FuzzDecodeMetaScan checks the fast path against encoding/json's: for any
// body, DecodeMeta decodes the same Meta, or fails the same way, with the
// scanner as without it.
func FuzzDecodeMetaScan(f *testing.F) {
	for _, b := range [][]byte{benchSuccess, benchStarted, benchFailure,
		[]byte(`{"task_id": "a", "status": "SUCCESS", "result": -12, "children": [], "TASK_ID": "b"}`),
		[]byte(`{"task_id": "a\u00e9", "status": "PROGRESS", "result": {"current": 1.5}, "traceback": null}`),
		[]byte(`{"task_id": "x", "status": "SUCCESS", "result": NaN}`),
		[]byte(`{"task_id": "x", "status": "SUCCESS", "result": "\xff"}`),
		[]byte(` {"status": "SUCCESS" , "task_id":"x","result":123456789012345678901234}`),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ferr := DecodeMeta(body)
		useScan = false
		slow, serr := DecodeMeta(body)
		useScan = true
		if (ferr == nil) != (serr == nil) {
			t.Fatalf("fast err %v, slow err %v", ferr, serr)
		}
		if ferr != nil {
			return
		}
		if a, b := fmt.Sprintf("%#v", fast), fmt.Sprintf("%#v", slow); a != b {
			t.Fatalf("fast and slow differ:\n%s\n%s", a, b)
		}
	})
}
