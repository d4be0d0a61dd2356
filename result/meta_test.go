package result

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/internal/fixtures"
)

func TestDecodeEveryFixtureResult(t *testing.T) {
	msgs, err := fixtures.Load()
	require.NoError(t, err)
	seen := map[State]int{}
	for _, m := range msgs {
		if !m.IsResult() {
			continue
		}
		meta, err := DecodeMessage(m.Properties.ContentType, m.Properties.ContentEncoding, m.Body, DecodeOptions{})
		require.NoError(t, err, "%s", m.Body)
		assert.Equal(t, m.Properties.CorrelationID, meta.TaskID)
		seen[meta.Status]++
		switch meta.Status {
		case Started:
			assert.Equal(t, "w1@vm", meta.startedHostname())
		case Failure:
			te := meta.Err()
			assert.Equal(t, "ValueError", te.Type)
			assert.Equal(t, "builtins", te.Module)
			assert.Equal(t, []any{"bad"}, te.Args)
			assert.Contains(t, te.Traceback, "ValueError: bad")
			assert.True(t, errors.Is(te, ErrTaskFailed))
			assert.Equal(t, "task "+meta.TaskID+" FAILURE: ValueError: bad", te.Error())
		case Revoked:
			te := meta.Err()
			assert.Equal(t, "TaskRevokedError", te.Type)
			assert.Equal(t, "celery.exceptions", te.Module)
			assert.True(t, errors.Is(te, ErrRevoked))
		case Retry:
			assert.Equal(t, "RuntimeError", meta.Err().Type)
			assert.NotEmpty(t, meta.Traceback)
		case "PROGRESS":
			assert.True(t, meta.Status.IsCustom())
			assert.Contains(t, meta.Result, "current")
		case Success:
			assert.Nil(t, meta.Err())
		}
	}
	for _, s := range []State{Started, Success, Failure, Revoked, Retry, "PROGRESS"} {
		assert.Positive(t, seen[s], "fixture has %s", s)
	}
}

func TestDecodeChildren(t *testing.T) {
	body := `{"children": [[["58fb1edc-a25f-4034-a39d-e5f4fc4d58d1", null], null]], "result": 3, "status": "SUCCESS", "task_id": "c1d6171e", "traceback": null}`
	m, err := DecodeMeta([]byte(body))
	require.NoError(t, err)
	require.Len(t, m.Children, 1)
	assert.Equal(t, []any{[]any{"58fb1edc-a25f-4034-a39d-e5f4fc4d58d1", nil}, nil}, m.Children[0])
}

func TestDecodeRejects(t *testing.T) {
	cases := map[string]struct {
		ct, enc string
		body    string
		want    string
	}{
		"invalid json":    {"application/json", "utf-8", `{"task_id": `, "not a JSON object"},
		"array":           {"application/json", "utf-8", `[1,2]`, "not a JSON object"},
		"missing id":      {"application/json", "utf-8", `{"status": "SUCCESS"}`, "task_id is missing"},
		"numeric id":      {"application/json", "utf-8", `{"task_id": 5, "status": "SUCCESS"}`, "task_id is missing or not a string"},
		"unknown status":  {"application/json", "utf-8", `{"task_id": "a", "status": "no such state!"}`, "unknown status"},
		"pending sent":    {"application/json", "utf-8", `{"task_id": "a", "status": "PENDING"}`, "unknown status"},
		"status not text": {"application/json", "utf-8", `{"task_id": "a", "status": 3}`, "unknown status"},
		"pickle":          {"application/x-python-serialize", "binary", "\x80\x04K\x05.", "pickle"},
		"yaml":            {"application/x-yaml", "utf-8", "a: 1", "yaml"},
		"msgpack":         {"application/x-msgpack", "binary", "\x81", "msgpack"},
		"compressed enc":  {"application/json", "gzip", "\x1f\x8b", "compressed"},
		"gzip bytes":      {"application/json", "utf-8", "\x1f\x8b\x08\x00", "compressed"},
		"bad traceback":   {"application/json", "utf-8", `{"task_id": "a", "status": "SUCCESS", "traceback": 5}`, "traceback"},
		"bad children":    {"application/json", "utf-8", `{"task_id": "a", "status": "SUCCESS", "children": {}}`, "children"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeMessage(c.ct, c.enc, []byte(c.body), DecodeOptions{})
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrMalformed)
			assert.Contains(t, err.Error(), c.want)
		})
	}
	_, err := DecodeMessage("application/json", "utf-8", []byte(`{"task_id": "a", "status": "SUCCESS", "result": "`+strings.Repeat("x", 100)+`"}`), DecodeOptions{MaxBodySize: 64})
	assert.ErrorContains(t, err, "over the 64-byte limit")
	var de *DecodeError
	_, err = DecodeMeta([]byte(`{"task_id": "abc", "status": "??"}`))
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "abc", de.TaskID)
}

func TestDecodeJSONNumbersAndEnvelopes(t *testing.T) {
	v, err := DecodeJSON([]byte(`{"i": 5, "big": 1180591620717411303424, "neg": -18446744073709551617, "f": 0.1, "e": 1e3,
		"dt": {"__type__": "datetime", "__value__": "2026-11-27T10:00:00.123456+00:00"},
		"naive": {"__type__": "datetime", "__value__": "2026-11-27T10:00:00"},
		"d": {"__type__": "date", "__value__": "2026-11-27"},
		"t": {"__type__": "time", "__value__": "10:00:00"},
		"dec": {"__type__": "decimal", "__value__": "3.14159265358979323846"},
		"u": {"__type__": "uuid", "__value__": "b4ff2cdd-3091-4443-ba7f-440916158df4"},
		"b": {"__type__": "bytes", "__value__": "raw"},
		"b64": {"__type__": "base64", "__value__": "aGk="},
		"odd": {"__type__": "frobnicate", "__value__": 1},
		"three": {"__type__": "date", "__value__": "2026-11-27", "x": 1}}`))
	require.NoError(t, err)
	m := v.(map[string]any)
	assert.Equal(t, int64(5), m["i"])
	want, _ := new(big.Int).SetString("1180591620717411303424", 10)
	assert.Equal(t, 0, want.Cmp(m["big"].(*big.Int)))
	wantNeg, _ := new(big.Int).SetString("-18446744073709551617", 10)
	assert.Equal(t, 0, wantNeg.Cmp(m["neg"].(*big.Int)))
	assert.Equal(t, 0.1, m["f"])
	assert.Equal(t, 1000.0, m["e"])
	assert.Equal(t, time.Date(2026, 11, 27, 10, 0, 0, 123456000, time.UTC), m["dt"].(time.Time).UTC())
	assert.Equal(t, time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC), m["naive"])
	assert.Equal(t, Date{time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)}, m["d"])
	assert.Equal(t, TimeOfDay("10:00:00"), m["t"])
	assert.Equal(t, Decimal("3.14159265358979323846"), m["dec"])
	assert.Equal(t, uuid.MustParse("b4ff2cdd-3091-4443-ba7f-440916158df4"), m["u"])
	assert.Equal(t, []byte("raw"), m["b"])
	assert.Equal(t, []byte("hi"), m["b64"])
	assert.Equal(t, Envelope{Type: "frobnicate", Value: int64(1)}, m["odd"])
	assert.IsType(t, map[string]any{}, m["three"], "only exact two-key envelopes are unwrapped")
}

func TestDecodeIntoKeepsRawAndEnvelopes(t *testing.T) {
	body := `{"task_id": "a", "status": "SUCCESS", "result": {"n": 9007199254740993, "when": {"__type__": "datetime", "__value__": "2026-11-27T10:00:00+00:00"}}}`
	m, err := DecodeMeta([]byte(body))
	require.NoError(t, err)
	assert.JSONEq(t, `{"n": 9007199254740993, "when": {"__type__": "datetime", "__value__": "2026-11-27T10:00:00+00:00"}}`, string(m.RawResult))
	var dst struct {
		N    int64     `json:"n"`
		When time.Time `json:"when"`
	}
	require.NoError(t, decodeInto(m, &dst))
	assert.Equal(t, int64(9007199254740993), dst.N)
	assert.True(t, dst.When.Equal(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)))
	var n json.Number
	m2, _ := DecodeMeta([]byte(`{"task_id": "a", "status": "SUCCESS", "result": 123456789012345678901234567890}`))
	require.NoError(t, decodeInto(m2, &n))
	assert.Equal(t, json.Number("123456789012345678901234567890"), n)
}

func TestEntryStatesNeverGoBackwards(t *testing.T) {
	e := NewEntry("t1")
	mk := func(s State) *Meta { return &Meta{TaskID: "t1", Status: s, Received: time.Now()} }
	assert.Equal(t, Pending, e.State())
	assert.Equal(t, Applied, e.Deliver(mk(Started)))
	assert.Equal(t, Applied, e.Deliver(mk("PROGRESS")))
	assert.Equal(t, Applied, e.Deliver(mk(Retry)))
	assert.Equal(t, Applied, e.Deliver(mk(Started)), "STARTED after RETRY moves forward")
	assert.False(t, e.Promise().Settled())
	assert.Equal(t, Settled, e.Deliver(mk(Success)))
	assert.True(t, e.Promise().Settled())
	assert.Equal(t, Stale, e.Deliver(mk(Started)))
	assert.Equal(t, Duplicate, e.Deliver(mk(Failure)))
	assert.Equal(t, Success, e.State())
	assert.Equal(t, 1, e.Retries())
	assert.False(t, e.DateDone().IsZero())
	assert.Len(t, e.History(), 5)
}

func TestEntrySubscriptionReplaysThenFollows(t *testing.T) {
	e := NewEntry("t")
	e.Deliver(&Meta{TaskID: "t", Status: Started})
	s := e.Subscribe()
	defer s.Close()
	<-s.Ready()
	got := s.Take()
	require.Len(t, got, 1)
	e.Deliver(&Meta{TaskID: "t", Status: "PROGRESS"})
	<-s.Ready()
	got = s.Take()
	require.Len(t, got, 1)
	assert.Equal(t, State("PROGRESS"), got[0].Status)
}

func TestStatePrecedence(t *testing.T) {
	order := []State{Pending, Retry, Rejected, Received, Started, Revoked, "PROGRESS", Failure, Success}
	for i := 0; i < len(order)-1; i++ {
		assert.True(t, order[i].Precedes(order[i+1]), "%s < %s", order[i], order[i+1])
	}
	assert.True(t, Success.Ready() && Failure.Ready() && Revoked.Ready())
	assert.False(t, Started.Ready() || Retry.Ready() || State("PROGRESS").Ready())
	assert.True(t, Failure.Propagates() && Revoked.Propagates() && !Retry.Propagates())
}

func TestTaskErrorMessageForms(t *testing.T) {
	te := &TaskError{TaskID: "x", State: Failure, Type: "CustomError", Module: "tasks", Args: []any{int64(42), "détail"}}
	assert.Equal(t, `task x FAILURE: tasks.CustomError: (42, "détail")`, te.Error())
	te = &TaskError{TaskID: "x", State: Failure, Type: "TimeLimitExceeded", Module: "billiard.exceptions", Args: []any{60.0}}
	assert.Equal(t, "60", te.Message())
	m := &Meta{TaskID: "y", Status: Revoked}
	assert.Equal(t, "TaskRevokedError", m.Err().Type)
}

func TestDecodePythonNonFinite(t *testing.T) {
	m, err := DecodeMeta([]byte(`{"task_id": "a", "status": "SUCCESS", "result": [NaN, Infinity, -Infinity, "NaN in a string", {"k": -Infinity}], "traceback": null, "children": []}`))
	require.NoError(t, err)
	v := m.Result.([]any)
	assert.True(t, math.IsNaN(v[0].(float64)))
	assert.True(t, math.IsInf(v[1].(float64), 1))
	assert.True(t, math.IsInf(v[2].(float64), -1))
	assert.Equal(t, "NaN in a string", v[3])
	assert.True(t, math.IsInf(v[4].(map[string]any)["k"].(float64), -1))
	_, err = DecodeJSON([]byte(`[NaNx]`))
	assert.Error(t, err)
}

func TestEmptyIDIsAnErrorNotAPanic(t *testing.T) {
	r := New("", nil)
	_, err := r.Get(context.Background())
	assert.ErrorIs(t, err, ErrEmptyID)
	_, err = r.Exists(context.Background())
	assert.ErrorIs(t, err, ErrEmptyID)
	assert.ErrorIs(t, r.Forget(context.Background()), ErrEmptyID)
	assert.Equal(t, Pending, r.State())
}
