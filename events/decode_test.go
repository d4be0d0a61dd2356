package events

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/internal/fixtures"
	"github.com/stalk-dev/stalk/result"
)

// captureBodies returns the messages published to celeryev in the real
// Celery 5.2.6 capture (internal/fixtures embeds it).
func captureBodies(tb testing.TB) []fixtures.Message {
	tb.Helper()
	out, err := loadCaptured()
	require.NoError(tb, err)
	return out
}

func loadCaptured() ([]fixtures.Message, error) {
	msgs, err := fixtures.Load()
	if err != nil {
		return nil, err
	}
	var out []fixtures.Message
	for _, m := range msgs {
		if m.Exchange == Exchange {
			out = append(out, m)
		}
	}
	return out, nil
}

func TestDecodeCapture(t *testing.T) {
	caps := captureBodies(t)
	require.NotEmpty(t, caps)
	counts := map[string]int{}
	var multi int
	for _, c := range caps {
		evs, err := DecodeMessage(c.Properties.ContentType, c.Properties.ContentEncoding, c.Body)
		require.NoError(t, err, string(c.Body))
		if strings.HasPrefix(string(c.Body), "[") {
			multi++
		} else {
			require.Len(t, evs, 1)
		}
		for _, ev := range evs {
			h := ev.EventHeader()
			counts[h.Type]++
			require.NotEmpty(t, h.Hostname)
			require.NotZero(t, h.PID)
			require.NotZero(t, h.Clock)
			require.False(t, h.Time.IsZero())
			require.Equal(t, 2026, h.Time.Year())
			if _, ok := ev.(*Unknown); ok {
				t.Fatalf("known event decoded as Unknown: %s", h.Type)
			}
			switch e := ev.(type) {
			case *TaskFailed:
				require.Equal(t, "ValueError('bad')", e.Exception)
				require.Contains(t, e.Traceback, "Traceback (most recent call last)")
			case *TaskRetried:
				require.Equal(t, "RuntimeError('try again')", e.Exception)
				require.Contains(t, e.Traceback, "Retry")
			case *TaskRevoked:
				if e.Terminated {
					require.Equal(t, "15", e.Signum)
				}
			case *TaskSucceeded:
				require.NotEmpty(t, e.Result)
				require.Positive(t, e.Runtime)
			case *TaskSent:
				require.True(t, strings.HasPrefix(e.Hostname, "gen"))
				require.Equal(t, "celery", e.Queue)
				require.Equal(t, "celery", e.RoutingKey)
				require.NotEmpty(t, e.Name)
			case *TaskReceived:
				require.NotEmpty(t, e.Name)
				require.NotEmpty(t, e.RootID)
			case *WorkerHeartbeat:
				require.Equal(t, 2.0, e.Freq)
				require.Equal(t, 2*time.Second, e.FreqDuration())
				require.Len(t, e.Loadavg, 3)
				require.Equal(t, "py-celery", e.SWIdent)
				require.Equal(t, "5.2.6", e.SWVer)
			}
		}
	}
	require.Positive(t, multi, "the capture has task.multi arrays")
	for _, typ := range []string{TypeTaskSent, TypeTaskReceived, TypeTaskStarted, TypeTaskSucceeded,
		TypeTaskFailed, TypeTaskRetried, TypeTaskRevoked, TypeWorkerHeartbeat} {
		require.Positive(t, counts[typ], typ)
	}
}

func TestDecodeCaptureIntoState(t *testing.T) {
	caps := captureBodies(t)
	st := NewState()
	for _, c := range caps {
		evs, err := Decode(c.Body)
		require.NoError(t, err)
		for _, ev := range evs {
			st.Apply(ev)
		}
	}
	ok := TasksByState(result.Success)
	require.NotEmpty(t, st.Tasks(ok))
	flaky, found := st.Task("bc1f4c54-6623-4097-90ef-596f4cc401db")
	require.True(t, found)
	require.Equal(t, result.Success, flaky.State)
	require.Equal(t, "tasks.flaky", flaky.Name)
	require.Equal(t, 2, flaky.Retries)
	require.Equal(t, "w1@vm", flaky.Worker)
	require.Equal(t, "'ok after 2'", flaky.Result)
	require.False(t, flaky.Retried.IsZero())
	boom, _ := st.Task("618abdec-11fb-4a38-9549-adcb56a05001")
	require.Equal(t, result.Failure, boom.State)
	require.Equal(t, "ValueError('bad')", boom.Exception)
	// The chain's second step is the first step's child.
	first, _ := st.Task("c1d6171e-3536-4154-816e-4982174dd9ad")
	require.Contains(t, first.Children, "58fb1edc-a25f-4034-a39d-e5f4fc4d58d1")
	w, ok2 := st.Worker("w1@vm")
	require.True(t, ok2)
	require.Equal(t, 9712, w.PID)
}

func TestDecodeShapes(t *testing.T) {
	evs, err := Decode([]byte("[]"))
	require.NoError(t, err)
	require.Empty(t, evs)

	evs, err = Decode([]byte(` [{"type":"task-started","uuid":"a","hostname":"w@h","clock":3,"timestamp":1.5}, 7, {"type":"task-started"}, {"type":"worker-heartbeat","hostname":"w@h","freq":2}]`))
	require.ErrorIs(t, err, ErrMalformed)
	require.Equal(t, 2, Malformed(err))
	require.Len(t, evs, 2)
	require.Equal(t, "a", evs[0].(*TaskStarted).UUID)
	require.Equal(t, time.Unix(1, 5e8).UTC(), evs[0].EventHeader().Time)

	for _, bad := range []string{"", "   ", "null", "42", `"x"`, "{", "[1", `{"uuid":"x"}`, `{"type":5}`, `{"type":""}`, `{"type":"task-succeeded"}`} {
		evs, err := Decode([]byte(bad))
		require.ErrorIs(t, err, ErrMalformed, bad)
		require.Empty(t, evs, bad)
		require.Equal(t, 1, Malformed(err), bad)
	}

	// Unknown types keep every field.
	evs, err = Decode([]byte(`{"type":"task-progress","uuid":"u","hostname":"w@h","current":3,"big":123456789012345678901234567890}`))
	require.NoError(t, err)
	u := evs[0].(*Unknown)
	require.Equal(t, "u", u.TaskID())
	require.Equal(t, json.Number("3"), u.Fields["current"])
	require.Equal(t, json.Number("123456789012345678901234567890"), u.Fields["big"])
	require.Contains(t, string(u.Raw), `"current":3`)

	// Lenient about types that vary: a list of args, a string signum,
	// a float clock, a non-string hostname.
	evs, err = Decode([]byte(`{"type":"task-received","uuid":"u","args":[1,2],"kwargs":{"a":1},"clock":5.0,"hostname":7}`))
	require.NoError(t, err)
	rcv := evs[0].(*TaskReceived)
	require.Equal(t, "[1,2]", rcv.Args)
	require.Equal(t, `{"a":1}`, rcv.Kwargs)
	require.EqualValues(t, 5, rcv.Clock)
	evs, err = Decode([]byte(`{"type":"task-revoked","uuid":"u","signum":"SIGKILL","terminated":true,"expired":false}`))
	require.NoError(t, err)
	require.Equal(t, "SIGKILL", evs[0].(*TaskRevoked).Signum)
}

func TestContentType(t *testing.T) {
	require.NoError(t, CheckContentType("application/json", "utf-8"))
	require.NoError(t, CheckContentType("application/json; charset=utf-8", ""))
	for ct, name := range map[string]string{
		"application/x-python-serialize": "pickle",
		"application/x-yaml":             "yaml",
		"application/x-msgpack":          "msgpack",
		"":                               "no content type",
		"text/plain":                     "unknown serializer",
	} {
		err := CheckContentType(ct, "utf-8")
		require.ErrorIs(t, err, ErrContentType, ct)
		require.Contains(t, err.Error(), name)
	}
	err := CheckContentType("application/json", "binary")
	require.ErrorIs(t, err, ErrContentType)
	_, err = DecodeMessage("application/x-python-serialize", "binary", []byte("\x80\x04."))
	require.True(t, errors.Is(err, ErrContentType))
}

func FuzzDecodeEvents(f *testing.F) {
	for _, c := range captureBodiesOrNil() {
		f.Add([]byte(c.Body))
	}
	for _, s := range []string{"[]", "{}", `[{"type":"task-started","uuid":"x"}]`, `{"type":"worker-heartbeat","loadavg":[1,"x",null]}`,
		`{"type":"task-succeeded","uuid":"x","runtime":1e308,"timestamp":-1}`, `[[],{}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := Decode(body)
		if err == nil && len(evs) == 0 {
			// Only an empty array decodes to nothing without an error.
			var arr []json.RawMessage
			if json.Unmarshal(body, &arr) != nil || len(arr) != 0 {
				t.Fatalf("no events and no error for %q", body)
			}
		}
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("error does not wrap ErrMalformed: %v", err)
		}
		st := NewState(MaxTasks(4))
		for _, ev := range evs {
			h := ev.EventHeader()
			if h.Type == "" {
				t.Fatalf("event without type from %q", body)
			}
			if te, ok := ev.(TaskEvent); ok && IsTask(h.Type) && te.TaskID() == "" {
				t.Fatalf("task event without id from %q", body)
			}
			st.Apply(ev)
		}
	})
}

func captureBodiesOrNil() []fixtures.Message {
	out, _ := loadCaptured()
	return out
}
