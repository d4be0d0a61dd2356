package result

import (
	"context"
)

// Backend is what an AsyncResult needs from a transport. stalk's amqp
// package implements it over RabbitMQ reply queues.
type Backend interface {
	// Attach returns the Entry that records id's states, and makes sure the
	// backend follows id's results. It never blocks; a failure to follow
	// rejects the entry's promise.
	Attach(id string) *Entry
	// Exists reports whether a result for id is stored by the broker or
	// known to this process.
	Exists(ctx context.Context, id string) (bool, error)
	// Forget drops what is known about id, locally and in the broker.
	Forget(ctx context.Context, id string) error
}

// Releaser is implemented by backends that can stop following a task
// before its result arrives (stalk's amqp.Client does).
type Releaser interface {
	Release(id string)
}

// Revoker is implemented by backends that can send Celery's revoke
// broadcast (stalk's amqp.Client does).
type Revoker interface {
	Revoke(ctx context.Context, ids []string, opts ...ControlOption) ([]ControlReply, error)
	RevokeByStampedHeaders(ctx context.Context, headers map[string][]string, opts ...ControlOption) ([]ControlReply, error)
}
