package revoke

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// captured is one line of testdata/celery-5.2.6-pidbox.jsonl.
type captured struct {
	Body       json.RawMessage `json:"body"`
	Exchange   string          `json:"exchange"`
	Properties struct {
		ContentEncoding string         `json:"content_encoding"`
		ContentType     string         `json:"content_type"`
		DeliveryMode    int            `json:"delivery_mode"`
		Headers         map[string]any `json:"headers"`
		Priority        int            `json:"priority"`
	} `json:"properties"`
	RoutingKeys []string `json:"routing_keys"`
}

func loadCapture(t *testing.T) []captured {
	t.Helper()
	f, err := os.Open("testdata/celery-5.2.6-pidbox.jsonl")
	require.NoError(t, err)
	defer f.Close()
	var out []captured
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var c captured
		require.NoError(t, json.Unmarshal(sc.Bytes(), &c))
		out = append(out, c)
	}
	require.NoError(t, sc.Err())
	require.Len(t, out, 5)
	return out
}

func asMap(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m), "%s", b)
	return m
}

// Our request bodies equal Celery's for the same command, ticket and oid.
func TestEncodeRequestMatchesCapture(t *testing.T) {
	capt := loadCapture(t)
	type want struct {
		line    int
		method  string
		args    any
		ticket  bool
		timeout time.Duration
	}
	cases := []want{
		{0, "revoke", revokeArgs{TaskID: "9726ad37-a596-4230-af16-2bcb8c5f3464", Terminate: true, Signal: "SIGTERM"}, true, 2 * time.Second},
		{2, "ping", nil, true, time.Second},
		{4, "revoke", revokeArgs{TaskID: "3e094927-3f56-4052-89d8-c1ee799ba8d7", Terminate: false, Signal: "SIGTERM"}, false, 0},
	}
	for _, tc := range cases {
		c := capt[tc.line]
		celery := asMap(t, c.Body)
		var ticket, oid string
		if tc.ticket {
			ticket = celery["ticket"].(string)
			oid = celery["reply_to"].(map[string]any)["routing_key"].(string)
		}
		b, err := encodeRequest(tc.method, tc.args, nil, ticket, oid)
		require.NoError(t, err)
		assert.Equal(t, celery, asMap(t, b), "line %d", tc.line)

		// Properties and header types as Celery sends them.
		assert.Equal(t, controlExchange, c.Exchange)
		assert.Equal(t, []string{""}, c.RoutingKeys)
		assert.Equal(t, contentType, c.Properties.ContentType)
		assert.Equal(t, contentEncoding, c.Properties.ContentEncoding)
		assert.Equal(t, int(amqp091.Persistent), c.Properties.DeliveryMode)
		assert.Equal(t, 0, c.Properties.Priority)
		h := requestHeaders(7, time.Unix(1795739177, 0), tc.timeout)
		assert.Equal(t, []string{"clock", "expires"}, keys(h))
		assert.IsType(t, int64(0), h["clock"])
		assert.IsType(t, float64(0), c.Properties.Headers["expires"], "the capture's expires is an epoch float")
		if tc.timeout > 0 {
			assert.IsType(t, float64(0), h["expires"], "now+timeout is a float")
			assert.InDelta(t, 1795739177+tc.timeout.Seconds(), h["expires"], 1e-6)
		} else {
			// app.control.revoke sends now+1 s even without a reply; we
			// send 0, as AsyncResult.revoke does (timeout None).
			assert.Equal(t, int64(0), h["expires"])
		}
		require.NoError(t, amqp091.Table(h).Validate())
	}
}

func keys(h amqp091.Table) []string {
	var ks []string
	for k := range h {
		ks = append(ks, k)
	}
	if len(ks) == 2 && ks[0] > ks[1] {
		ks[0], ks[1] = ks[1], ks[0]
	}
	return ks
}

// Keys go out in Celery's insertion order (the capture's keys are sorted,
// so the order is checked on the text).
func TestEncodeRequestKeyOrder(t *testing.T) {
	b, err := encodeRequest("revoke", revokeArgs{TaskID: []string{"a", "b"}, Terminate: true, Signal: 9},
		[]string{"w1@h"}, "T", "O")
	require.NoError(t, err)
	assert.Equal(t, `{"method":"revoke","arguments":{"task_id":["a","b"],"terminate":true,"signal":9},`+
		`"destination":["w1@h"],"pattern":null,"matcher":null,"ticket":"T",`+
		`"reply_to":{"exchange":"reply.celery.pidbox","routing_key":"O"}}`, string(b))

	b, err = encodeRequest("ping", nil, nil, "", "")
	require.NoError(t, err)
	assert.Equal(t, `{"method":"ping","arguments":{},"destination":null,"pattern":null,"matcher":null}`, string(b))
}

func TestRequestHeadersWithoutReply(t *testing.T) {
	h := requestHeaders(3, time.Now(), 0)
	assert.Equal(t, int64(3), h["clock"])
	assert.Equal(t, int64(0), h["expires"], "Celery sends 0 when no timeout")
	require.NoError(t, amqp091.Table(h).Validate())
}

func TestEncodeStampedHeaders(t *testing.T) {
	args := stampArgs{
		Headers:   orderedStamps{"tenant": {"acme"}, "batch": {"b1", "b2"}},
		Terminate: true,
		Signal:    "SIGKILL",
	}
	b, err := encodeRequest("revoke_by_stamped_headers", args, nil, "", "")
	require.NoError(t, err)
	assert.Equal(t, `{"method":"revoke_by_stamped_headers","arguments":{"headers":{"batch":["b1","b2"],"tenant":"acme"},`+
		`"terminate":true,"signal":"SIGKILL"},"destination":null,"pattern":null,"matcher":null}`, string(b))

	b, err = json.Marshal(orderedStamps{`we"ird`: {"<x>"}})
	require.NoError(t, err)
	assert.True(t, json.Valid(b))
	assert.Equal(t, map[string]any{`we"ird`: "<x>"}, asMap(t, b))
}

func TestNormalizeSignal(t *testing.T) {
	ok := map[string]any{
		"":          "SIGTERM",
		"SIGKILL":   "SIGKILL",
		"KILL":      "SIGKILL",
		"kill":      "SIGKILL",
		"sigterm":   "SIGTERM",
		" SIGUSR1 ": "SIGUSR1",
		"HUP":       "SIGHUP",
		"9":         9,
		"15":        15,
		"64":        64,
	}
	for in, want := range ok {
		got, err := normalizeSignal(in)
		require.NoError(t, err, "%q", in)
		assert.Equal(t, want, got, "%q", in)
	}
	for _, in := range []string{"SIGNOPE", "NOPE", "0", "-9", "65", "SIG", "9x", "SIG KILL", "1e1"} {
		_, err := normalizeSignal(in)
		require.Error(t, err, "%q", in)
		assert.ErrorIs(t, err, ErrInvalidSignal, "%q", in)
		assert.ErrorIs(t, err, ErrInvalidArgument, "%q", in)
	}
}

func TestResolve(t *testing.T) {
	o, err := resolve(kindRevoke, nil)
	require.NoError(t, err)
	assert.False(t, o.Reply)
	assert.Zero(t, o.Timeout)

	o, err = resolve(kindRevoke, []Option{Wait(0)})
	require.NoError(t, err)
	assert.True(t, o.Reply)
	assert.Equal(t, time.Second, o.Timeout, "default idle timeout")

	o, err = resolve(kindRevoke, []Option{Wait(3 * time.Second), Destination("a@h", "b@h", "a@h"), nil})
	require.NoError(t, err)
	assert.Equal(t, []string{"a@h", "b@h"}, o.Destination, "duplicates dropped")
	assert.Equal(t, 2, o.Limit, "limit defaults to the destinations")
	assert.Equal(t, 3*time.Second, o.Timeout)

	o, err = resolve(kindRevoke, []Option{Wait(time.Second), Destination("a@h", "b@h"), Limit(1)})
	require.NoError(t, err)
	assert.Equal(t, 1, o.Limit)

	o, err = resolve(kindQuery, nil)
	require.NoError(t, err)
	assert.True(t, o.Reply, "ping and inspect always collect")
	assert.Equal(t, time.Second, o.Timeout)
	assert.Zero(t, o.Limit)

	o, err = resolve(kindRevoke, []Option{Terminate(), Signal("KILL")})
	require.NoError(t, err)
	assert.True(t, o.Terminate)

	bad := map[string]struct {
		k    kind
		opts []Option
	}{
		"signal without terminate": {kindRevoke, []Option{Signal("KILL")}},
		"negative wait":            {kindRevoke, []Option{Wait(-time.Second)}},
		"negative limit":           {kindRevoke, []Option{Wait(time.Second), Limit(-1)}},
		"limit without wait":       {kindRevoke, []Option{Limit(2)}},
		"empty destination":        {kindRevoke, []Option{Destination("")}},
		"terminate on ping":        {kindQuery, []Option{Terminate()}},
		"signal on inspect":        {kindQuery, []Option{Signal("KILL")}},
	}
	for name, tc := range bad {
		_, err := resolve(tc.k, tc.opts)
		assert.ErrorIs(t, err, ErrInvalidArgument, name)
	}
}

func TestDecodeReplyCapture(t *testing.T) {
	capt := loadCapture(t)
	rs, err := decodeReply(capt[1].Body)
	require.NoError(t, err)
	require.Len(t, rs, 1)
	assert.Equal(t, "w1@vm", rs[0].Worker)
	assert.Equal(t, "terminate: 9726ad37-a596-4230-af16-2bcb8c5f3464", rs[0].OK)
	assert.Empty(t, rs[0].Error)
	assert.NoError(t, rs[0].Err())
	assert.JSONEq(t, `{"ok": "terminate: 9726ad37-a596-4230-af16-2bcb8c5f3464"}`, string(rs[0].Value))

	rs, err = decodeReply(capt[3].Body)
	require.NoError(t, err)
	require.Len(t, rs, 1)
	assert.Equal(t, Reply{Worker: "w1@vm", OK: "pong", Value: json.RawMessage(`{"ok": "pong"}`)}, rs[0])

	h := readReplyHeaders(amqp091.Table{"clock": int32(3), "ticket": "61476188-4510-4d37-ac7e-4fd3553c2fbf"})
	assert.Equal(t, replyHeaders{ticket: "61476188-4510-4d37-ac7e-4fd3553c2fbf", clock: 3}, h)
}

func TestDecodeReply(t *testing.T) {
	rs, err := decodeReply([]byte(`{"w@h": {"error": "KeyError('revoke_by_stamped_headers')"}}`))
	require.NoError(t, err)
	require.Len(t, rs, 1)
	assert.Equal(t, "KeyError('revoke_by_stamped_headers')", rs[0].Error)
	assert.EqualError(t, rs[0].Err(), "stalk: worker w@h: KeyError('revoke_by_stamped_headers')")

	// Data replies: the value is kept whole, ok/error stay empty.
	rs, err = decodeReply([]byte(`{"w@h": ["id1", "id2"]}`))
	require.NoError(t, err)
	assert.Equal(t, `["id1", "id2"]`, string(rs[0].Value))
	assert.Empty(t, rs[0].OK)

	rs, err = decodeReply([]byte(`{"w@h": {"total": {"tasks.add": 18446744073709551617}}}`))
	require.NoError(t, err)
	assert.Contains(t, string(rs[0].Value), "18446744073709551617", "large integers stay exact")

	// Several workers in one body keep their order.
	rs, err = decodeReply([]byte(`{"b@h": {"ok": "pong"}, "a@h": {"ok": "pong"}}`))
	require.NoError(t, err)
	assert.Equal(t, []string{"b@h", "a@h"}, []string{rs[0].Worker, rs[1].Worker})

	// Odd but decodable values.
	rs, err = decodeReply([]byte(`{"w@h": {"ok": 1, "error": null}}`))
	require.NoError(t, err)
	assert.Equal(t, "1", rs[0].OK)
	assert.Empty(t, rs[0].Error)
	rs, err = decodeReply([]byte(`{"w@h": {"error": ""}}`))
	require.NoError(t, err)
	assert.NotEmpty(t, rs[0].Error, "an error reply is never mistaken for success")

	for _, bad := range []string{``, `null`, `[]`, `"x"`, `{}`, `{"": {"ok": "pong"}}`, `{"w@h": }`,
		`{"w@h": {"ok": "pong"}} {}`, `{"w@h": {"ok": "pong"}`, `{"w@h" {"ok": "pong"}}`, `{1: 2}`} {
		_, err := decodeReply([]byte(bad))
		assert.ErrorIs(t, err, errBadReply, "%q", bad)
	}
}

func TestReadReplyHeaders(t *testing.T) {
	h := readReplyHeaders(amqp091.Table{"ticket": []byte("t1"), "clock": int64(9), "expires": 12.5})
	assert.Equal(t, replyHeaders{ticket: "t1", clock: 9, expires: 12.5}, h)
	h = readReplyHeaders(amqp091.Table{"ticket": 5, "clock": "x", "expires": int32(0)})
	assert.Equal(t, replyHeaders{}, h)
	assert.Equal(t, replyHeaders{}, readReplyHeaders(nil))
}

func TestOutcome(t *testing.T) {
	o := Options{Reply: true, Timeout: time.Second, Destination: []string{"a@h", "b@h", "c@h"}, Limit: 3}
	replies := []Reply{{Worker: "a@h", OK: "pong"}, {Worker: "b@h", Error: "KeyError('x')"}}
	err := outcome("x", replies, o, nil)
	require.Error(t, err)
	var we *WorkerError
	require.ErrorAs(t, err, &we)
	assert.Equal(t, WorkerError{Method: "x", Worker: "b@h", Message: "KeyError('x')"}, *we)
	assert.ErrorIs(t, err, ErrNoReply)
	assert.Contains(t, err.Error(), "c@h")
	assert.NotContains(t, err.Error(), "a@h")

	// A limit below the destinations is not a silence.
	o.Limit = 1
	assert.NoError(t, outcome("ping", replies[:1], o, nil))

	// A broadcast nobody answered.
	err = outcome("ping", nil, Options{Reply: true, Timeout: time.Second}, nil)
	assert.ErrorIs(t, err, ErrNoReply)
	assert.NoError(t, outcome("ping", replies[:1], Options{Reply: true, Timeout: time.Second}, nil))

	// A collection cut short reports why, not silences.
	cut := errors.New("cut")
	err = outcome("ping", nil, Options{Reply: true, Destination: []string{"a@h"}, Limit: 1}, cut)
	assert.ErrorIs(t, err, cut)
	assert.NotErrorIs(t, err, ErrNoReply)
}

func TestCheckReply(t *testing.T) {
	good := amqp091.Delivery{ContentType: "application/json", ContentEncoding: "utf-8", Body: []byte(`{}`)}
	assert.NoError(t, checkReply(good))
	for name, d := range map[string]amqp091.Delivery{
		"pickle":     {ContentType: "application/x-python-serialize"},
		"yaml":       {ContentType: "application/x-yaml"},
		"binary":     {ContentType: "application/json", ContentEncoding: "binary"},
		"compressed": {ContentType: "application/json", Headers: amqp091.Table{"compression": "application/x-gzip"}},
		"too big":    {ContentType: "application/json", Body: make([]byte, maxReplyBody+1)},
	} {
		err := checkReply(d)
		assert.ErrorIs(t, err, errBadReply, name)
		if strings.Contains(d.ContentType, "python") {
			assert.Contains(t, err.Error(), "application/x-python-serialize")
		}
	}
}

func FuzzDecodeReply(f *testing.F) {
	for _, s := range []string{
		`{"w1@vm": {"ok": "pong"}}`,
		`{"w1@vm": {"ok": "terminate: 9726ad37-a596-4230-af16-2bcb8c5f3464"}}`,
		`{"w@h": {"error": "KeyError('revoke_by_stamped_headers')"}}`,
		`{"w@h": [{"id": "x", "args": [1], "time_start": 1.5}]}`,
		`{"a": 1, "b": null}`,
		`[]`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rs, err := decodeReply(body)
		if err != nil {
			if !errors.Is(err, errBadReply) {
				t.Fatalf("error does not wrap errBadReply: %v", err)
			}
			return
		}
		if len(rs) == 0 {
			t.Fatal("no replies and no error")
		}
		for _, r := range rs {
			if r.Worker == "" {
				t.Fatal("empty worker")
			}
			if !json.Valid(r.Value) {
				t.Fatalf("invalid value %q", r.Value)
			}
			if r.Error != "" && r.Err() == nil {
				t.Fatal("error reply without Err")
			}
		}
	})
}
