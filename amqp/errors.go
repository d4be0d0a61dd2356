package amqp

import (
	"errors"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
	"github.com/stalk-dev/stalk/result"
)

var (
	// ErrClosed is returned by a closed client, and rejects results that
	// were pending when it closed. It is result.ErrClosed, the one ErrClosed
	// of every stalk package.
	ErrClosed = result.ErrClosed

	// ErrAccessRefused is wrapped when the broker refuses the credentials,
	// the vhost or a permission.
	ErrAccessRefused = broker.ErrAccessRefused

	// ErrUnroutable is wrapped when a task reached no queue: the broker
	// returned it (tasks are published mandatory). Nothing was delivered.
	ErrUnroutable = broker.ErrUnroutable

	// ErrExchangeNotFound is wrapped when a task names an exchange that does
	// not exist. Nothing was delivered.
	ErrExchangeNotFound = broker.ErrExchangeNotFound

	// ErrNotConfirmed is wrapped when the broker did not confirm a task: it
	// nacked it, or ctx ended first. In the second case the task may still
	// be delivered (the broker can hold a publish during a resource alarm,
	// or while a quorum queue has lost its majority).
	ErrNotConfirmed = broker.ErrNotConfirmed

	// ErrUnknownQueue is wrapped when a task names a queue that is not among
	// WithTaskQueues and WithCreateMissingQueues(false) is set.
	ErrUnknownQueue = celery.ErrUnknownQueue

	// ErrQueueNotFound is wrapped when a task's queue does not exist and
	// WithDeclareQueues(false) says the workers own the topology.
	ErrQueueNotFound = errors.New("stalk: queue not found")

	// ErrNoDelayedDelivery is wrapped when WithDelayedDelivery(DelayedRequired)
	// is set and a delayed task cannot go through native delayed delivery.
	ErrNoDelayedDelivery = errors.New("stalk: native delayed delivery is not available")

	// ErrReplyQueueDeleted is wrapped by the error that fails pending
	// results whose reply queue was deleted while they waited.
	ErrReplyQueueDeleted = errors.New("stalk: reply queue was deleted")

	// ErrReplyQueueUnavailable is wrapped when a task cannot be sent because
	// the shared reply queue is unreachable: a classic queue whose cluster
	// node is down. Its result would be dropped. Quorum reply queues
	// (WithReplyQueueType) do not have this failure.
	ErrReplyQueueUnavailable = errors.New("stalk: reply queue unavailable")

	// ErrForgotten fails a pending result that was forgotten.
	ErrForgotten = errors.New("stalk: result was forgotten")

	// ErrInvalidOption is wrapped by Dial when options are invalid or
	// conflict.
	ErrInvalidOption = errors.New("stalk: invalid options")
)

// trimPrefix: see broker.Unprefixed.
func trimPrefix(err error) error { return broker.Unprefixed(err) }
