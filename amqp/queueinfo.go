package amqp

import (
	"context"
	"fmt"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/internal/celery"
)

// QueueInfo is what the broker says about a queue right now.
type QueueInfo struct {
	Name      string
	Exists    bool
	Messages  int // ready messages (not the ones delivered and unacknowledged)
	Consumers int
}

// QueueInfo asks the broker about queue ("" for the default queue) with a
// passive declare: whether it exists, how many messages wait in it, and
// how many consumers it has. A task queue without consumers has no worker:
// a task sent there waits until one starts. (For quorum queues RabbitMQ's
// counts can lag by a few seconds.)
func (c *Client) QueueInfo(ctx context.Context, queue string) (QueueInfo, error) {
	if queue == "" {
		queue = c.cfg.topo.DefaultQueue
	}
	if err := celery.CheckShortString("queue", queue, 0); err != nil {
		return QueueInfo{}, fmt.Errorf("stalk: queue info: %w", err)
	}
	conn, err := c.resConn.Connection(ctx)
	if err != nil {
		return QueueInfo{}, fmt.Errorf("stalk: queue info: %w", broker.WaitErr(ctx, c.resConn, err))
	}
	q, ok, err := broker.QueueExistsOn(conn, queue)
	if err != nil {
		return QueueInfo{}, fmt.Errorf("stalk: queue info: %w", err)
	}
	return QueueInfo{Name: queue, Exists: ok, Messages: q.Messages, Consumers: q.Consumers}, nil
}
