package events

import (
	"encoding/json"
	"math"
	"time"
)

// Event types as they appear in an event's "type" field.
const (
	TypeTaskSent        = "task-sent"
	TypeTaskReceived    = "task-received"
	TypeTaskStarted     = "task-started"
	TypeTaskSucceeded   = "task-succeeded"
	TypeTaskFailed      = "task-failed"
	TypeTaskRetried     = "task-retried"
	TypeTaskRevoked     = "task-revoked"
	TypeTaskRejected    = "task-rejected"
	TypeWorkerOnline    = "worker-online"
	TypeWorkerHeartbeat = "worker-heartbeat"
	TypeWorkerOffline   = "worker-offline"
)

// Event is one decoded Celery event. The concrete types are pointers:
// *TaskSent, *TaskReceived, *TaskStarted, *TaskSucceeded, *TaskFailed,
// *TaskRetried, *TaskRevoked, *TaskRejected, *WorkerOnline,
// *WorkerHeartbeat, *WorkerOffline, and *Unknown for every other type
// (task-cancelled, custom task-xyz events, anything a newer Celery adds).
// Use a type switch:
//
//	switch e := ev.(type) {
//	case *events.TaskSucceeded:
//		fmt.Println(e.UUID, e.Result, e.Runtime)
//	case *events.TaskFailed:
//		fmt.Println(e.UUID, e.Exception)
//	}
//
// Events handed to a handler are shared with other subscriptions: treat
// them as read-only.
type Event interface {
	// EventHeader returns the fields every event carries.
	EventHeader() *Header
}

// TaskEvent is implemented by every task event, including *Unknown events
// whose type starts with "task-".
type TaskEvent interface {
	Event
	TaskID() string
}

// Header holds the fields every Celery event carries.
type Header struct {
	// Type is the event type, e.g. "task-succeeded".
	Type string
	// Hostname is the sender: a worker's nodename ("celery@host"), or
	// "gen<pid>@host" for a client that publishes task-sent.
	Hostname string
	// UTCOffset is the sender's Celery utcoffset() when it sent the event:
	// its current offset, daylight saving included, in whole hours *west*
	// of UTC (floored), so UTC+2 is -2.
	UTCOffset int
	// PID is the sending process (the worker's main process for worker
	// events).
	PID int
	// Clock is the sender's Lamport clock.
	Clock int64
	// Timestamp is the raw "timestamp" field: epoch seconds as the sender
	// saw them.
	Timestamp float64
	// Time is Timestamp as a time.Time (UTC). Epoch seconds need no
	// utcoffset correction, so none is applied. Zero when the event has no
	// usable timestamp.
	Time time.Time
	// Received is when this process received the event; zero when the
	// event was decoded outside a Receiver.
	Received time.Time
	// Raw is the event's JSON object as it arrived. It aliases the
	// delivery body: do not modify it.
	Raw json.RawMessage
}

// EventHeader implements Event.
func (h *Header) EventHeader() *Header { return h }

// TaskSent is published by a client right after it sends a task, when
// task_send_sent_event is on (see PublishTaskSent).
type TaskSent struct {
	Header
	UUID       string
	RootID     string
	ParentID   string // "" when null
	Name       string
	Args       string // Python repr of the positional arguments (argsrepr)
	Kwargs     string // Python repr of the keyword arguments (kwargsrepr)
	Retries    int
	ETA        string // ISO-8601, "" when null
	Expires    string // ISO-8601, "" when null
	Queue      string
	Exchange   string
	RoutingKey string
}

// TaskReceived is sent by a worker when it receives a task.
type TaskReceived struct {
	Header
	UUID     string
	Name     string
	Args     string // Python repr
	Kwargs   string // Python repr
	RootID   string
	ParentID string // "" when null
	Retries  int
	ETA      string // ISO-8601, "" when null
	Expires  string // ISO-8601, "" when null
}

// TaskStarted is sent when a worker starts executing a task.
type TaskStarted struct {
	Header
	UUID string
}

// TaskSucceeded is sent when a task returns.
type TaskSucceeded struct {
	Header
	UUID string
	// Result is Celery's saferepr of the return value (at most 1024
	// characters), e.g. "4" or "'ok'": a Python repr, not JSON.
	Result string
	// Runtime is the execution time, as the raw float seconds and as a
	// Duration.
	RuntimeSeconds float64
	Runtime        time.Duration
}

// TaskFailed is sent when a task raises, or when a worker receives a task
// it does not know (then only Exception is set, e.g. "NotRegistered('x')").
type TaskFailed struct {
	Header
	UUID      string
	Exception string // repr of the exception, e.g. "ValueError('bad')"
	Traceback string
}

// TaskRetried is sent when a task calls retry(); the retry is republished
// with the same id and Retries+1.
type TaskRetried struct {
	Header
	UUID      string
	Exception string
	Traceback string
}

// TaskRevoked is sent when a worker discards or terminates a revoked task,
// or revokes it because it expired.
type TaskRevoked struct {
	Header
	UUID       string
	Terminated bool
	// Signum is the signal that terminated the task, as sent ("15",
	// "SIGTERM"); "" when null.
	Signum  string
	Expired bool
}

// TaskRejected is sent when a worker rejects a task message.
type TaskRejected struct {
	Header
	UUID    string
	Requeue bool
}

// WorkerInfo is what worker-online, worker-heartbeat and worker-offline
// carry besides the header.
type WorkerInfo struct {
	Freq      float64 // heartbeat interval, seconds
	Active    int     // tasks executing now
	Processed int     // tasks processed since start
	Loadavg   []float64
	SWIdent   string // "py-celery"
	SWVer     string // e.g. "5.2.6"
	SWSys     string // e.g. "Linux"
}

// FreqDuration returns Freq as a Duration.
func (w WorkerInfo) FreqDuration() time.Duration { return secondsToDuration(w.Freq) }

// WorkerOnline is sent when a worker starts.
type WorkerOnline struct {
	Header
	WorkerInfo
}

// WorkerHeartbeat is sent every Freq seconds (2 s by default) by a live
// worker.
type WorkerHeartbeat struct {
	Header
	WorkerInfo
}

// WorkerOffline is sent when a worker shuts down warmly.
type WorkerOffline struct {
	Header
	WorkerInfo
}

// Unknown is an event whose type this package has no struct for. Nothing
// is dropped: all its fields are in Fields (numbers as json.Number) and Raw.
type Unknown struct {
	Header
	UUID   string // the "uuid" field, if it is a string
	Fields map[string]any
}

// TaskID implements TaskEvent.
func (e *TaskSent) TaskID() string { return e.UUID }

// TaskID implements TaskEvent.
func (e *TaskReceived) TaskID() string { return e.UUID }

// TaskID implements TaskEvent.
func (e *TaskStarted) TaskID() string { return e.UUID }

// TaskID implements TaskEvent.
func (e *TaskSucceeded) TaskID() string { return e.UUID }

// TaskID implements TaskEvent.
func (e *TaskFailed) TaskID() string { return e.UUID }

// TaskID implements TaskEvent.
func (e *TaskRetried) TaskID() string { return e.UUID }

// TaskID implements TaskEvent.
func (e *TaskRevoked) TaskID() string { return e.UUID }

// TaskID implements TaskEvent.
func (e *TaskRejected) TaskID() string { return e.UUID }

// TaskID returns the "uuid" field; it is "" for non-task events.
func (e *Unknown) TaskID() string { return e.UUID }

// IsTask reports whether an event type is a task event ("task-...").
func IsTask(typ string) bool { return len(typ) > 5 && typ[:5] == "task-" }

// IsWorker reports whether an event type is a worker event ("worker-...").
func IsWorker(typ string) bool { return len(typ) > 7 && typ[:7] == "worker-" }

// epochTime converts float epoch seconds to a UTC time. Values outside a
// sane range (before 1970 or after year 9999) give the zero time.
func epochTime(ts float64) time.Time {
	if math.IsNaN(ts) || ts <= 0 || ts > 253402300799 {
		return time.Time{}
	}
	sec, frac := math.Modf(ts)
	return time.Unix(int64(sec), int64(math.Round(frac*1e9))).UTC()
}

func secondsToDuration(s float64) time.Duration {
	if math.IsNaN(s) || s <= 0 {
		return 0
	}
	if s > float64(math.MaxInt64)/1e9 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(s * float64(time.Second))
}
