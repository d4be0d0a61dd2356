package events

import (
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

func TestNewTaskSent(t *testing.T) {
	ev := NewTaskSent(TaskSent{UUID: "id-1", Name: "tasks.add", Args: "(2, 3)", Queue: "q1"})
	require.Equal(t, TypeTaskSent, ev.Type)
	require.True(t, strings.HasPrefix(ev.Hostname, "gen"))
	require.Contains(t, ev.Hostname, "@")
	require.NotZero(t, ev.PID)
	require.Positive(t, ev.Clock)
	require.WithinDuration(t, time.Now(), ev.Time, time.Second)
	require.Equal(t, "id-1", ev.RootID)
	require.Equal(t, "q1", ev.RoutingKey)
	require.Equal(t, "{}", ev.Kwargs)
	next := NewTaskSent(TaskSent{UUID: "id-2", Name: "x"})
	require.Greater(t, next.Clock, ev.Clock)
	require.Equal(t, "celery", next.Queue)

	body, err := ev.MarshalJSON()
	require.NoError(t, err)
	s := string(body)
	// Celery's key order: hostname, utcoffset, pid, clock, fields, timestamp, type.
	keys := []string{`"hostname"`, `"utcoffset"`, `"pid"`, `"clock"`, `"uuid"`, `"root_id"`, `"parent_id":null`, `"name"`,
		`"args":"(2, 3)"`, `"kwargs":"{}"`, `"retries":0`, `"eta":null`, `"expires":null`, `"queue":"q1"`, `"exchange":""`,
		`"routing_key":"q1"`, `"timestamp"`, `"type":"task-sent"`}
	pos := -1
	for _, k := range keys {
		i := strings.Index(s, k)
		require.Greater(t, i, pos, "%s in %s", k, s)
		pos = i
	}
	evs, err := Decode(body)
	require.NoError(t, err)
	back := evs[0].(*TaskSent)
	require.Equal(t, ev.UUID, back.UUID)
	require.Equal(t, ev.Clock, back.Clock)
	require.Equal(t, ev.Hostname, back.Hostname)
	require.InDelta(t, ev.Timestamp, back.Timestamp, 1e-6)

	msg, err := TaskSentPublishing(ev)
	require.NoError(t, err)
	require.Equal(t, "application/json", msg.ContentType)
	require.Equal(t, "utf-8", msg.ContentEncoding)
	require.Equal(t, amqp091.Transient, msg.DeliveryMode)
	require.Equal(t, ev.Hostname, msg.Headers["hostname"])
	require.NoError(t, msg.Headers.Validate())
}

func TestUTCOffset(t *testing.T) {
	winter := time.Date(2026, time.January, 15, 12, 0, 0, 0, time.UTC)
	summer := time.Date(2026, time.July, 15, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		zone           string
		winter, summer int
	}{
		{"UTC", 0, 0},
		{"Europe/Berlin", -1, -2}, // CEST in summer, as Python's altzone
		{"America/New_York", 5, 4},
		{"Asia/Kolkata", -6, -6}, // -5.5 floored, as Python's //
		{"Australia/Sydney", -11, -10},
	} {
		loc, err := time.LoadLocation(tc.zone)
		if err != nil {
			t.Logf("skip %s: %v", tc.zone, err)
			continue
		}
		require.Equal(t, tc.winter, utcOffsetAt(winter.In(loc)), "%s in January", tc.zone)
		require.Equal(t, tc.summer, utcOffsetAt(summer.In(loc)), "%s in July", tc.zone)
	}
}
