package celery

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/internal/fixtures"
	"github.com/stalk-dev/stalk/result"
)

func ptr[T any](v T) *T { return &v }

// typed is how the 5.6.3 capture writes a header value: "string:py",
// "int32:0", "bool:false", "nil", or a table/list as JSON.
func typed(v any) any {
	switch t := v.(type) {
	case nil:
		return "nil"
	case string:
		return "string:" + t
	case int32:
		return fmt.Sprintf("int32:%d", t)
	case bool:
		return fmt.Sprintf("bool:%v", t)
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = typed(x)
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, x := range t {
			out[k] = typed(x)
		}
		return out
	}
	return fmt.Sprintf("%T:%v", v, v)
}

// TestBuildMatchesCelery56 builds the same call as Python's Celery 5.6.3
// send_task did in the capture and compares every header, with its AMQP
// type, and the body.
func TestBuildMatchesCelery56(t *testing.T) {
	msgs, err := fixtures.Load563(false)
	require.NoError(t, err)
	var py []fixtures.Message563
	for _, m := range msgs {
		if m.Lang() == "string:py" {
			if _, has := m.Headers["stamps"]; has {
				py = append(py, m)
			}
		}
	}
	require.Len(t, py, 2, "the capture has 5.6.3's plain and eta+expires sends")
	for i, want := range py {
		id := want.Properties.CorrelationID
		c := &Call{Args: []any{2, 3}, TaskID: id}
		if i == 1 {
			// The capture's eta and expires are 50 s apart, from one now.
			eta, err := result.ParseTime(strings.TrimPrefix(want.Headers["eta"].(string), "string:"))
			require.NoError(t, err)
			c.Countdown, c.ExpiresIn = ptr(10*time.Second), ptr(60*time.Second)
			c.Now = func() time.Time { return eta.Add(-10 * time.Second) }
		}
		m, err := Build("cltasks.add", c, "reply-q")
		require.NoError(t, err)
		for _, k := range want.HeaderKeys {
			if k == "x-delivery-count" {
				continue // the broker's
			}
			got, ok := m.Headers[k]
			require.True(t, ok, "header %s missing", k)
			switch k {
			case "lang":
				assert.Equal(t, "go", got)
			case "origin":
				assert.Regexp(t, `^gen\d+@`, got)
			default:
				assert.Equal(t, want.Headers[k], typed(got), "header %s", k)
			}
		}
		assert.Len(t, m.Headers, len(want.HeaderKeys), "no other headers")
		assert.JSONEq(t, string(want.Body), string(m.Body))
		assert.Equal(t, want.Properties.Expiration, m.Expiration)
		assert.Equal(t, id, m.CorrelationID)
	}
}

// TestBuildMatchesCelery52 checks the fields a Celery 5.2.6 client sent in
// the older capture: the same values; 5.2.6 workers take the 5.3+ headers
// as extra request attributes.
func TestBuildMatchesCelery52(t *testing.T) {
	msgs, err := fixtures.Load()
	require.NoError(t, err)
	var want fixtures.Message
	for _, m := range msgs {
		if m.IsTask() && m.Properties.Headers["task"] == "tasks.add" {
			want = m
			break
		}
	}
	require.NotEmpty(t, want.Body)
	id := want.Properties.CorrelationID
	m, err := Build("tasks.add", &Call{Args: []any{2, 3}, TaskID: id}, "r")
	require.NoError(t, err)
	for k, v := range want.Properties.Headers {
		got, ok := m.Headers[k]
		require.True(t, ok, "header %s missing", k)
		switch k {
		case "lang":
			assert.Equal(t, "go", got)
		case "origin":
			assert.Regexp(t, `^gen\d+@`, got)
		case "retries":
			assert.Equal(t, int32(0), got, "retries must be an AMQP int, not a float")
		case "timelimit":
			assert.Equal(t, []any{nil, nil}, got)
		default:
			assert.Equal(t, v, got, "header %s", k)
		}
	}
	for k, v := range m.Headers {
		_, isBytes := v.([]byte)
		assert.False(t, isBytes, "header %s is []byte", k)
	}
	assert.JSONEq(t, string(want.Body), string(m.Body))
	assert.Equal(t, `[[2,3],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]`, string(m.Body))
}

func TestBuildKwargsMatchesCelery(t *testing.T) {
	msgs, err := fixtures.Load()
	require.NoError(t, err)
	var want fixtures.Message
	for _, m := range msgs {
		if m.IsTask() && m.Properties.Headers["kwargsrepr"] != "{}" {
			want = m
		}
	}
	require.NotEmpty(t, want.Body)
	m, err := Build("tasks.add", &Call{Kwargs: map[string]any{"x": 4, "y": 5}, TaskID: "k"}, "r")
	require.NoError(t, err)
	assert.Equal(t, want.Properties.Headers["kwargsrepr"], m.Headers["kwargsrepr"])
	assert.Equal(t, want.Properties.Headers["argsrepr"], m.Headers["argsrepr"])
	assert.JSONEq(t, string(want.Body), string(m.Body))
}

func TestBuildEtaExpiresPriority(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	c := &Call{TaskID: "e", Now: func() time.Time { return now }, Countdown: ptr(time.Second), ExpiresIn: ptr(time.Minute),
		Priority: ptr(3), Queue: "q1", HardLimit: ptr(30.0), SoftLimit: ptr(20.0), Shadow: "alias", Ignore: true}
	m, err := Build("tasks.add", c, "")
	require.NoError(t, err)
	h := m.Headers
	assert.Equal(t, "2026-11-27T10:00:01.000000+00:00", h["eta"])
	assert.Equal(t, "2026-11-27T10:01:00.000000+00:00", h["expires"])
	assert.Equal(t, "60000", m.Expiration)
	assert.EqualValues(t, 3, m.Priority)
	assert.Equal(t, []any{30.0, 20.0}, h["timelimit"], "[hard, soft]")
	assert.Equal(t, "alias", h["shadow"])
	assert.Equal(t, true, h["ignore_result"])
	assert.Equal(t, now.Add(time.Second), m.ETA)
}

func TestBuildStamps(t *testing.T) {
	m, err := Build("t", &Call{TaskID: "s", Stamps: map[string]any{"tenant": "acme", "batch": []string{"b1", "b2"}}}, "r")
	require.NoError(t, err)
	assert.Equal(t, []any{"batch", "tenant"}, m.Headers["stamped_headers"])
	assert.Equal(t, map[string]any{"tenant": "acme", "batch": []any{"b1", "b2"}}, m.Headers["stamps"])
	_, err = Build("t", &Call{TaskID: "s", Stamps: map[string]any{"task": "x"}}, "r")
	assert.Error(t, err, "a stamp cannot be one of Celery's own headers")
}

func TestBuildFloatsStayFloats(t *testing.T) {
	m, err := Build("t", &Call{TaskID: "f", Args: []any{2.0, 1e20, 0.5, 7}}, "r")
	require.NoError(t, err)
	assert.Equal(t, "(2.0, 1e+20, 0.5, 7)", m.Headers["argsrepr"])
	assert.True(t, strings.HasPrefix(string(m.Body), "[[2.0,1e+20,0.5,7],"), string(m.Body))
}

func TestBuildRejectsBadInput(t *testing.T) {
	cases := map[string]*Call{
		"negative":         {TaskID: "x", Countdown: ptr(-time.Second)},
		"both":             {TaskID: "x", Countdown: new(time.Duration), ETA: time.Now()},
		"expires twice":    {TaskID: "x", ExpiresIn: ptr(time.Second), Expires: time.Now()},
		"json":             {TaskID: "x", Args: []any{func() {}}},
		"nan":              {TaskID: "x", Args: []any{float64(0) / zero}},
		"priority":         {TaskID: "x", Priority: ptr(256)},
		"own header":       {TaskID: "x", Headers: map[string]any{"task": "evil"}},
		"bad header value": {TaskID: "x", Headers: map[string]any{"h": struct{}{}}},
		"long task id":     {TaskID: strings.Repeat("i", 256)},
		"long queue":       {TaskID: "x", Queue: strings.Repeat("q", 256)},
		"long routing key": {TaskID: "x", RoutingKey: strings.Repeat("k", 256)},
		"long exchange":    {TaskID: "x", Exchange: ptr(strings.Repeat("e", 256))},
		"long reply_to":    {TaskID: "x", ReplyTo: ptr(strings.Repeat("r", 256))},
		"long header name": {TaskID: "x", Headers: map[string]any{strings.Repeat("h", 256): 1}},
		"no id":            {},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Build("tasks.add", c, "r")
			assert.Error(t, err)
		})
	}
	_, err := Build(" ", &Call{TaskID: "x"}, "r")
	assert.Error(t, err)
	_, err = Build("tasks.add", &Call{TaskID: strings.Repeat("i", 256)}, "r")
	assert.ErrorContains(t, err, "task id is 256 bytes, over AMQP's 255-byte limit")
	_, err = Build("tasks.add", &Call{TaskID: strings.Repeat("i", 255), Queue: strings.Repeat("q", 255)}, "r")
	assert.NoError(t, err)
}

var zero float64

func TestHeaderValueTypes(t *testing.T) {
	m, err := Build("t", &Call{TaskID: "x", Headers: map[string]any{
		"n": 5, "big": int64(1) << 40, "s": "text", "b": []byte("bytes"), "l": []string{"a"}, "m": map[string]any{"k": 1},
	}}, "r")
	require.NoError(t, err)
	h := m.Headers
	assert.Equal(t, int32(5), h["n"])
	assert.Equal(t, int64(1)<<40, h["big"])
	assert.Equal(t, "bytes", h["b"])
	assert.Equal(t, []any{"a"}, h["l"])
	assert.Equal(t, map[string]any{"k": int32(1)}, h["m"])
}

func TestDecodeTaskRoundTripAndFixtures(t *testing.T) {
	m, err := Build("tasks.echo", &Call{TaskID: "rt", Args: []any{"a", 1}, Kwargs: map[string]any{"k": []any{1}},
		Stamps: map[string]any{"s": "v"}}, "r")
	require.NoError(t, err)
	tm, err := DecodeTask(m.Headers, "application/json", "utf-8", m.Body)
	require.NoError(t, err)
	assert.Equal(t, "rt", tm.ID)
	assert.Equal(t, "tasks.echo", tm.Task)
	assert.Equal(t, []any{"a", int64(1)}, tm.Args)
	assert.Equal(t, map[string]any{"k": []any{int64(1)}}, tm.Kwargs)
	assert.Equal(t, map[string]any{"s": "v"}, tm.Stamps)

	msgs, err := fixtures.Load()
	require.NoError(t, err)
	n := 0
	for _, m := range msgs {
		if !m.IsTask() {
			continue
		}
		h := map[string]any{}
		for k, v := range m.Properties.Headers {
			if f, ok := v.(float64); ok && f == float64(int32(f)) {
				v = int32(f)
			}
			h[k] = v
		}
		tm, err := DecodeTask(h, m.Properties.ContentType, m.Properties.ContentEncoding, m.Body)
		require.NoError(t, err, "%s", m.Body)
		assert.Equal(t, m.Properties.CorrelationID, tm.ID)
		n++
	}
	assert.Greater(t, n, 10)

	_, err = DecodeTask(map[string]any{"id": "x"}, "application/json", "utf-8", []byte(`[[],{},{}]`))
	assert.ErrorIs(t, err, result.ErrMalformed)
	_, err = DecodeTask(map[string]any{"id": "x", "task": "t"}, "application/json", "utf-8", []byte(`{"args": []}`))
	assert.ErrorIs(t, err, result.ErrMalformed)
	_, err = DecodeTask(map[string]any{"id": "x", "task": "t"}, "application/x-python-serialize", "binary", []byte(`x`))
	assert.ErrorContains(t, err, "pickle")
}

func FuzzDecodeTask(f *testing.F) {
	f.Add("tasks.add", "id-1", []byte(`[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`))
	f.Add("tasks.add", "id-2", []byte(`[[], {"x": 4, "y": 5}, {"chain": [{"task": "tasks.add", "args": [10], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}]}]`))
	f.Add("t", "i", []byte(`[1, 2]`))
	f.Add("t", "", []byte(`null`))
	f.Fuzz(func(t *testing.T, task, id string, body []byte) {
		tm, err := DecodeTask(map[string]any{"task": task, "id": id}, "application/json", "utf-8", body)
		if err == nil {
			if tm.ID != id || tm.Task != task || tm.Args == nil || tm.Kwargs == nil {
				t.Fatalf("decoded an incomplete task: %+v", tm)
			}
			if _, err := json.Marshal([]any{tm.RawArgs, tm.RawKwargs}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzBuild builds messages from arbitrary JSON arguments: never a panic,
// and what is built decodes back to the same values.
func FuzzBuild(f *testing.F) {
	f.Add([]byte(`[1, 2.0, "x", [1e20], {"a": null}]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, args []byte) {
		var v []any
		if json.Unmarshal(args, &v) != nil {
			return
		}
		m, err := Build("t", &Call{TaskID: "f", Args: v}, "r")
		if err != nil {
			return
		}
		tm, err := DecodeTask(m.Headers, "application/json", "utf-8", m.Body)
		if err != nil {
			t.Fatalf("built a message that does not decode: %v\n%s", err, m.Body)
		}
		if len(tm.Args) != len(v) {
			t.Fatalf("args %d, want %d", len(tm.Args), len(v))
		}
		_ = ArgsRepr(v)
	})
}
