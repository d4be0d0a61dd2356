package amqp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/internal/fixtures"
	"github.com/stalk-dev/stalk/result"
)

// fixtureTask returns the first captured task message for name.
func fixtureTask(t *testing.T, name string) fixtures.Message {
	t.Helper()
	msgs, err := fixtures.Load()
	require.NoError(t, err)
	for _, m := range msgs {
		if m.IsTask() && m.Properties.Headers["task"] == name {
			return m
		}
	}
	t.Fatalf("no captured %s task", name)
	return fixtures.Message{}
}

func TestBuildTaskMatchesCelery(t *testing.T) {
	want := fixtureTask(t, "tasks.add")
	id := want.Properties.CorrelationID
	msg, err := buildTask("tasks.add", &sendConfig{args: []any{2, 3}, taskID: id}, "celery")
	require.NoError(t, err)
	assert.Equal(t, "", msg.exchange)
	assert.Equal(t, "celery", msg.routingKey)
	assert.Equal(t, want.RoutingKey(), msg.routingKey)
	p := msg.pub
	assert.Equal(t, want.Properties.ContentType, p.ContentType)
	assert.Equal(t, want.Properties.ContentEncoding, p.ContentEncoding)
	assert.EqualValues(t, want.Properties.DeliveryMode, p.DeliveryMode)
	assert.EqualValues(t, want.Properties.Priority, p.Priority)
	assert.Equal(t, id, p.CorrelationId)
	assert.Empty(t, p.Expiration)
	// Every header Celery 5.2.6 sends, with the same value (lang and origin
	// name the sender).
	for k, v := range want.Properties.Headers {
		got, ok := p.Headers[k]
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
	assert.Len(t, p.Headers, len(want.Properties.Headers), "no extra headers")
	// Header strings are Go strings (AMQP 'S'), never []byte.
	for k, v := range p.Headers {
		_, isBytes := v.([]byte)
		assert.False(t, isBytes, "header %s is []byte", k)
	}
	assert.JSONEq(t, string(want.Body), string(p.Body))
	assert.Equal(t, `[[2,3],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]`, string(p.Body))
}

func TestBuildTaskKwargsMatchesCelery(t *testing.T) {
	msgs, err := fixtures.Load()
	require.NoError(t, err)
	var want fixtures.Message
	for _, m := range msgs {
		if m.IsTask() && m.Properties.Headers["kwargsrepr"] != "{}" {
			want = m
		}
	}
	require.NotEmpty(t, want.Body)
	msg, err := buildTask("tasks.add", &sendConfig{kwargs: map[string]any{"x": 4, "y": 5}, taskID: "k"}, "celery")
	require.NoError(t, err)
	assert.Equal(t, want.Properties.Headers["kwargsrepr"], msg.pub.Headers["kwargsrepr"])
	assert.Equal(t, want.Properties.Headers["argsrepr"], msg.pub.Headers["argsrepr"])
	assert.JSONEq(t, string(want.Body), string(msg.pub.Body))
}

func TestBuildTaskEtaExpiresPriority(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	cfg := &sendConfig{taskID: "e", now: func() time.Time { return now }}
	for _, o := range []SendOption{Countdown(time.Second), Expires(time.Minute), Priority(3), Queue("q1"), TimeLimit(30 * time.Second), SoftTimeLimit(20 * time.Second), Shadow("alias"), IgnoreResult()} {
		o(cfg)
	}
	msg, err := buildTask("tasks.add", cfg, "celery")
	require.NoError(t, err)
	h := msg.pub.Headers
	assert.Equal(t, "2026-11-27T10:00:01.000000+00:00", h["eta"])
	assert.Equal(t, "2026-11-27T10:01:00.000000+00:00", h["expires"])
	assert.Equal(t, "60000", msg.pub.Expiration)
	assert.EqualValues(t, 3, msg.pub.Priority)
	assert.Equal(t, []any{30.0, 20.0}, h["timelimit"], "[hard, soft]")
	assert.Equal(t, "alias", h["shadow"])
	assert.Equal(t, true, h["ignore_result"])
	assert.Equal(t, "q1", msg.routingKey)
	assert.Equal(t, "q1", msg.queue)

	// The captured eta/expires have the same form.
	want := fixtureTask(t, "tasks.add")
	msgs, _ := fixtures.Load()
	for _, m := range msgs {
		if m.IsTask() && m.Properties.Headers["eta"] != nil {
			want = m
		}
	}
	assert.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$`, want.Properties.Headers["eta"])
	assert.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$`, h["eta"])
}

func TestBuildTaskRejectsBadInput(t *testing.T) {
	neg := -time.Second
	cases := map[string]*sendConfig{
		"empty name":       nil,
		"negative":         {taskID: "x", countdown: &neg},
		"both":             {taskID: "x", countdown: new(time.Duration), eta: time.Now()},
		"json":             {taskID: "x", args: []any{func() {}}},
		"priority":         {taskID: "x", priority: ptr(256)},
		"own header":       {taskID: "x", headers: map[string]any{"task": "evil"}},
		"bad header value": {taskID: "x", headers: map[string]any{"h": struct{}{}}},
		"long task id":     {taskID: strings.Repeat("i", 256)},
		"long queue":       {taskID: "x", queue: strings.Repeat("q", 256)},
		"long routing key": {taskID: "x", routingKey: strings.Repeat("k", 256)},
		"long exchange":    {taskID: "x", exchange: ptr(strings.Repeat("e", 256))},
		"long reply_to":    {taskID: "x", replyTo: ptr(strings.Repeat("r", 256))},
		"long header name": {taskID: "x", headers: map[string]any{strings.Repeat("h", 256): 1}},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			task := "tasks.add"
			if cfg == nil {
				task, cfg = " ", &sendConfig{taskID: "x"}
			}
			_, err := buildTask(task, cfg, "celery")
			assert.Error(t, err)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestHeaderValueTypes(t *testing.T) {
	msg, err := buildTask("t", &sendConfig{taskID: "x", headers: map[string]any{
		"n": 5, "big": int64(1) << 40, "s": "text", "b": []byte("bytes"), "l": []string{"a"}, "m": map[string]any{"k": 1},
	}}, "celery")
	require.NoError(t, err)
	h := msg.pub.Headers
	assert.Equal(t, int32(5), h["n"])
	assert.Equal(t, int64(1)<<40, h["big"])
	assert.Equal(t, "bytes", h["b"])
	assert.Equal(t, []any{"a"}, h["l"])
	assert.Equal(t, amqp091.Table{"k": int32(1)}, h["m"])
}

func TestPythonRepr(t *testing.T) {
	b, _ := new(big.Int).SetString("123456789012345678901234567890", 10)
	cases := []struct {
		args []any
		want string
	}{
		{[]any{2, 3}, "(2, 3)"},
		{[]any{2}, "(2,)"},
		{nil, "()"},
		{[]any{"it's", `say "hi"`, "plain"}, `("it's", 'say "hi"', 'plain')`},
		{[]any{true, nil, 1.5, 2.0}, "(True, None, 1.5, 2.0)"},
		{[]any{[]any{1, "a"}, map[string]any{"b": 1, "a": []int{2}}}, "([1, 'a'], {'a': [2], 'b': 1})"},
		{[]any{b}, "(123456789012345678901234567890,)"},
		{[]any{"line\nbreak\\"}, `('line\nbreak\\',)`},
		{[]any{json.Number("1"), json.Number("2.5")}, "(1, 2.5)"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, argsRepr(c.args))
	}
	long := argsRepr([]any{strings.Repeat("é", 2000)})
	assert.LessOrEqual(t, len(long), reprLimit+3)
	assert.True(t, strings.HasSuffix(long, "..."))
	assert.Equal(t, "{'x': 4, 'y': 5}", kwargsRepr(map[string]any{"y": 5, "x": 4}))
}

func TestDecodeTaskRoundTripAndFixtures(t *testing.T) {
	msg, err := buildTask("tasks.echo", &sendConfig{taskID: "rt", args: []any{"a", 1}, kwargs: map[string]any{"k": []any{1}}}, "celery")
	require.NoError(t, err)
	tm, err := DecodeTask(msg.pub.Headers, msg.pub.ContentType, msg.pub.ContentEncoding, msg.pub.Body)
	require.NoError(t, err)
	assert.Equal(t, "rt", tm.ID)
	assert.Equal(t, "tasks.echo", tm.Task)
	assert.Equal(t, []any{"a", int64(1)}, tm.Args)
	assert.Equal(t, map[string]any{"k": []any{int64(1)}}, tm.Kwargs)

	msgs, err := fixtures.Load()
	require.NoError(t, err)
	n := 0
	for _, m := range msgs {
		if !m.IsTask() {
			continue
		}
		h := amqp091.Table{}
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

	_, err = DecodeTask(amqp091.Table{"id": "x"}, "application/json", "utf-8", []byte(`[[],{},{}]`))
	assert.ErrorIs(t, err, result.ErrMalformed)
	_, err = DecodeTask(amqp091.Table{"id": "x", "task": "t"}, "application/json", "utf-8", []byte(`{"args": []}`))
	assert.ErrorIs(t, err, result.ErrMalformed)
	_, err = DecodeTask(amqp091.Table{"id": "x", "task": "t"}, "application/x-python-serialize", "binary", []byte(`x`))
	assert.ErrorContains(t, err, "pickle")
}

func FuzzDecodeTask(f *testing.F) {
	f.Add("tasks.add", "id-1", []byte(`[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`))
	f.Add("tasks.add", "id-2", []byte(`[[], {"x": 4, "y": 5}, {"chain": [{"task": "tasks.add", "args": [10], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}]}]`))
	f.Add("t", "i", []byte(`[1, 2]`))
	f.Add("t", "", []byte(`null`))
	f.Fuzz(func(t *testing.T, task, id string, body []byte) {
		tm, err := DecodeTask(amqp091.Table{"task": task, "id": id}, "application/json", "utf-8", body)
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

// amqp091-go silently truncates short strings over 255 bytes, so a long id
// or name must be refused with an error that says why, and 255 must pass.
func TestShortStringLimits(t *testing.T) {
	_, err := buildTask("tasks.add", &sendConfig{taskID: strings.Repeat("i", 256)}, "celery")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "task id is 256 bytes, over AMQP's 255-byte limit")
	_, err = buildTask("tasks.add", &sendConfig{taskID: strings.Repeat("i", 255), queue: strings.Repeat("q", 255)}, "celery")
	assert.NoError(t, err)

	cfg := defaultConfig()
	cfg.replyPrefix = strings.Repeat("p", 220)
	err = cfg.validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "reply queue prefix is 220 bytes; with 36 more")
}

func TestConnLost(t *testing.T) {
	write := &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}
	for _, err := range []error{amqp091.ErrClosed, write, fmt.Errorf("wrapped: %w", write), io.EOF, syscall.EPIPE} {
		assert.True(t, connLost(err), "%v", err)
	}
	for _, err := range []error{errors.New("bad frame"), amqp091.ErrFieldType} {
		assert.False(t, connLost(err), "%v", err)
	}
}
