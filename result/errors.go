package result

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors, for errors.Is.
var (
	// ErrClosed: the client was closed while the result was pending.
	ErrClosed = errors.New("stalk: client closed")
	// ErrTimeout: Get gave up waiting. It also satisfies
	// errors.Is(err, context.DeadlineExceeded).
	ErrTimeout = errors.New("stalk: timed out waiting for the result")
	// ErrRevoked is satisfied by the *TaskError of a REVOKED task.
	ErrRevoked = errors.New("stalk: task revoked")
	// ErrTaskFailed is satisfied by the *TaskError of a FAILURE.
	ErrTaskFailed = errors.New("stalk: task failed")
	// ErrMalformed is wrapped by every decoding error.
	ErrMalformed = errors.New("stalk: malformed message")
	// ErrEmptyID: the AsyncResult was made for an empty task id.
	ErrEmptyID = errors.New("stalk: empty task id")
	// ErrNoBackend: the AsyncResult has no backend to ask.
	ErrNoBackend = errors.New("stalk: result has no backend")
	// ErrNotSupported: the operation is not supported by the rpc backend.
	ErrNotSupported = errors.New("stalk: not supported by the rpc result backend")
	// ErrIncompleteStream: a task in the graph has not finished (Celery's
	// IncompleteStream).
	ErrIncompleteStream = errors.New("stalk: incomplete stream: a task in the graph is not ready")
	// ErrResultLost: the connection was lost, and the result may have been
	// lost with it (a transient result across a broker restart).
	ErrResultLost = errors.New("stalk: result may have been lost")
	// ErrReleased: the client stopped following the task (Release) while
	// the result was pending. The result itself is not lost.
	ErrReleased = errors.New("stalk: released: this client stopped following the task")
)

// TaskError is a Celery exception decoded from a FAILURE, REVOKED or RETRY
// result. Use errors.As to get it, and errors.Is with ErrRevoked or
// ErrTaskFailed to test the state.
type TaskError struct {
	TaskID    string
	State     State
	Type      string // exc_type, the class's qualified name, e.g. "ValueError"
	Module    string // exc_module, e.g. "builtins"
	Args      []any  // exc_message: the exception's args
	Traceback string // the remote traceback, when the worker sent one
	// Raw is the result field as received, for forms this type does not model.
	Raw any
}

// Message joins the exception's arguments as Python's str(exc) would for
// the common cases: a single argument is shown as is, several as a tuple.
func (e *TaskError) Message() string {
	switch len(e.Args) {
	case 0:
		return ""
	case 1:
		if s, ok := e.Args[0].(string); ok {
			return s
		}
		return fmt.Sprint(e.Args[0])
	}
	parts := make([]string, len(e.Args))
	for i, a := range e.Args {
		if s, ok := a.(string); ok {
			parts[i] = fmt.Sprintf("%q", s)
		} else {
			parts[i] = fmt.Sprint(a)
		}
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// QualifiedType is Module.Type, except for builtins.
func (e *TaskError) QualifiedType() string {
	if e.Module == "" || e.Module == "builtins" || e.Module == "exceptions" {
		return e.Type
	}
	return e.Module + "." + e.Type
}

func (e *TaskError) Error() string {
	typ := e.QualifiedType()
	if typ == "" {
		typ = "Exception"
	}
	msg := e.Message()
	head := fmt.Sprintf("task %s %s", e.TaskID, e.State)
	if msg == "" {
		return head + ": " + typ
	}
	return head + ": " + typ + ": " + msg
}

// Is makes errors.Is(err, ErrRevoked) hold for REVOKED and
// errors.Is(err, ErrTaskFailed) for FAILURE.
func (e *TaskError) Is(target error) bool {
	switch target {
	case ErrRevoked:
		return e.State == Revoked
	case ErrTaskFailed:
		return e.State == Failure
	}
	return false
}

// timeoutError is returned when Get times out. It is ErrTimeout, and it is
// also the context error that caused it.
type timeoutError struct {
	id          string
	cause       error  // context.DeadlineExceeded
	lost        bool   // the connection was lost while waiting
	unreachable string // why the result cannot arrive now, if known
}

func (e *timeoutError) Error() string {
	s := fmt.Sprintf("stalk: timed out waiting for the result of task %s", e.id)
	switch {
	case e.unreachable != "":
		s += " (" + e.unreachable + ": the result may have been lost; a persistent one comes back with the node)"
	case e.lost:
		s += " (the broker connection was lost while waiting: a transient result may have been lost; persistent results survive)"
	}
	return s
}

func (e *timeoutError) Is(target error) bool {
	return target == ErrTimeout || target == context.DeadlineExceeded || (e.lost && target == ErrResultLost)
}

func (e *timeoutError) Unwrap() error { return e.cause }

// DecodeError describes a message that could not be decoded. It wraps
// ErrMalformed.
type DecodeError struct {
	TaskID string // when it could be read
	Reason string
	Err    error
}

func (e *DecodeError) Error() string {
	s := "stalk: malformed result message"
	if e.TaskID != "" {
		s += " for task " + e.TaskID
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *DecodeError) Is(target error) bool { return target == ErrMalformed }
func (e *DecodeError) Unwrap() error        { return e.Err }
