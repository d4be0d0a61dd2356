package events

import (
	"encoding/json"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// clientClock is this process's Lamport clock for the events it publishes.
var clientClock atomic.Int64

// ClientHostname returns the hostname Celery clients put in the events
// they send: "gen<pid>@<host>".
func ClientHostname() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return fmt.Sprintf("gen%d@%s", os.Getpid(), host)
}

// LocalUTCOffset returns what Celery's utcoffset() gives in this process
// right now: the local zone's current offset, daylight saving included
// (Python's time.altzone//3600 while DST is in effect, time.timezone//3600
// otherwise), in whole hours *west* of UTC, floored: UTC+2 gives -2 and
// UTC+5:30 gives -6.
func LocalUTCOffset() int { return utcOffsetAt(time.Now()) }

// utcOffsetAt is Celery's utcoffset() at instant t in t's location.
func utcOffsetAt(t time.Time) int {
	_, east := t.Zone()
	west := -east
	q := west / 3600
	if west%3600 != 0 && west < 0 {
		q-- // floor division, as Python's //
	}
	return q
}

// NewTaskSent fills the fields of a task-sent event that the caller left
// zero, as Celery's client does: Type "task-sent", Hostname
// ClientHostname(), PID, UTCOffset, Clock (this process's Lamport clock,
// incremented), Timestamp and Time (now), RootID (the task's own id),
// Queue "celery" and RoutingKey (the queue). The caller sets UUID, Name,
// Args and Kwargs (Python reprs, such as "(2, 3)" and "{}"), and where they
// apply ParentID, Retries, ETA, Expires and Exchange ("" for the default
// exchange).
func NewTaskSent(ev TaskSent) TaskSent {
	ev.Type = TypeTaskSent
	if ev.Hostname == "" {
		ev.Hostname = ClientHostname()
	}
	if ev.PID == 0 {
		ev.PID = os.Getpid()
	}
	if ev.UTCOffset == 0 {
		ev.UTCOffset = LocalUTCOffset()
	}
	if ev.Clock == 0 {
		ev.Clock = clientClock.Add(1)
	}
	if ev.Timestamp == 0 {
		if ev.Time.IsZero() {
			ev.Time = time.Now()
		}
		ev.Timestamp = float64(ev.Time.UnixNano()) / 1e9
	}
	ev.Time = epochTime(ev.Timestamp)
	if ev.RootID == "" {
		ev.RootID = ev.UUID
	}
	if ev.Queue == "" {
		ev.Queue = "celery"
	}
	if ev.RoutingKey == "" {
		ev.RoutingKey = ev.Queue
	}
	if ev.Args == "" {
		ev.Args = "()"
	}
	if ev.Kwargs == "" {
		ev.Kwargs = "{}"
	}
	return ev
}

// wireTaskSent is task-sent in Celery's key order: hostname, utcoffset,
// pid, clock, the event's fields, timestamp, type.
type wireTaskSent struct {
	Hostname   string  `json:"hostname"`
	UTCOffset  int     `json:"utcoffset"`
	PID        int     `json:"pid"`
	Clock      int64   `json:"clock"`
	UUID       string  `json:"uuid"`
	RootID     string  `json:"root_id"`
	ParentID   *string `json:"parent_id"`
	Name       string  `json:"name"`
	Args       string  `json:"args"`
	Kwargs     string  `json:"kwargs"`
	Retries    int     `json:"retries"`
	ETA        *string `json:"eta"`
	Expires    *string `json:"expires"`
	Queue      string  `json:"queue"`
	Exchange   string  `json:"exchange"`
	RoutingKey string  `json:"routing_key"`
	Timestamp  float64 `json:"timestamp"`
	Type       string  `json:"type"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// MarshalJSON encodes the event as Celery's client publishes it, with
// null for an empty ParentID, ETA or Expires.
func (e *TaskSent) MarshalJSON() ([]byte, error) {
	typ := e.Type
	if typ == "" {
		typ = TypeTaskSent
	}
	return json.Marshal(wireTaskSent{
		Hostname: e.Hostname, UTCOffset: e.UTCOffset, PID: e.PID, Clock: e.Clock,
		UUID: e.UUID, RootID: e.RootID, ParentID: nullable(e.ParentID), Name: e.Name,
		Args: e.Args, Kwargs: e.Kwargs, Retries: e.Retries, ETA: nullable(e.ETA),
		Expires: nullable(e.Expires), Queue: e.Queue, Exchange: e.Exchange,
		RoutingKey: e.RoutingKey, Timestamp: e.Timestamp, Type: typ,
	})
}

// TaskSentPublishing returns the AMQP message for ev (after NewTaskSent):
// content type application/json, utf-8, delivery mode 1 (transient),
// priority 0, headers {"hostname": ev.Hostname}. Publish it to Exchange
// with routing key "task.sent".
func TaskSentPublishing(ev TaskSent) (amqp091.Publishing, error) {
	body, err := ev.MarshalJSON()
	if err != nil {
		return amqp091.Publishing{}, fmt.Errorf("events: encode task-sent: %w", err)
	}
	return amqp091.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp091.Transient,
		Priority:        0,
		Headers:         amqp091.Table{"hostname": ev.Hostname},
		Body:            body,
	}, nil
}

// RoutingKeyTaskSent is the routing key of task-sent events.
const RoutingKeyTaskSent = "task.sent"
