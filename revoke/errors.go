package revoke

import (
	"errors"
	"fmt"

	"github.com/stalk-dev/stalk/internal/broker"
)

var (
	// ErrClosed is returned by commands on a closed Controller, or one whose
	// connection was closed. It is the same value as the amqp client's
	// ErrClosed, so errors.Is works across packages.
	ErrClosed = broker.ErrClosed

	// ErrInvalidArgument is wrapped by every error that a command returns
	// before publishing because its input or options are wrong: an empty id
	// list, an empty header map, a bad signal, a negative timeout.
	ErrInvalidArgument = errors.New("stalk: invalid argument")

	// ErrInvalidSignal is wrapped, together with ErrInvalidArgument, when
	// revoke.Signal names no signal we know.
	ErrInvalidSignal = errors.New("stalk: invalid signal")

	// ErrNoReply is wrapped when replies were wanted and a worker did not
	// answer before the idle timeout: once per named Destination that stayed
	// silent, or once when no worker at all replied to a broadcast.
	ErrNoReply = errors.New("stalk: no reply from worker")

	// ErrNoWorker is wrapped, together with ErrUnroutable, when a command
	// reached no worker at all: no worker's control queue is bound to
	// celery.pidbox. A command that wanted replies also wraps ErrNoReply.
	ErrNoWorker = errors.New("stalk: no worker is online")

	// ErrUnroutable is the amqp package's ErrUnroutable.
	ErrUnroutable = broker.ErrUnroutable
)

// WorkerError is a worker's {"error": "..."} reply to a control command:
// an unknown command (Celery 5.2 answers revoke_by_stamped_headers with
// "KeyError('revoke_by_stamped_headers')"), or a handler that raised.
// Commands return one per failing worker, joined with errors.Join; use
// errors.As to reach them.
type WorkerError struct {
	Method  string // the control command, e.g. "revoke"
	Worker  string // the worker's nodename
	Message string // the worker's error text, usually a Python repr
}

func (e *WorkerError) Error() string {
	return fmt.Sprintf("stalk: %s: worker %s replied with an error: %s", e.Method, e.Worker, e.Message)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidArgument}, args...)...)
}

// trimPrefix: see broker.Unprefixed.
func trimPrefix(err error) error { return broker.Unprefixed(err) }
