package amqp

import (
	"context"
	"fmt"
	"sync"

	"github.com/stalk-dev/stalk/revoke"
)

// controlExt holds the remote-control Controller, dialled on first use.
type controlExt struct {
	mu     sync.Mutex
	ctrl   *revoke.Controller
	closed bool
}

// Control returns the client's remote-control Controller (revoke, ping,
// inspect, control commands). The first call connects it, on a connection
// of its own named "<name>-control", under ctx; later calls return it at
// once. Close closes it.
func (c *Client) Control(ctx context.Context) (*revoke.Controller, error) {
	c.control.mu.Lock()
	defer c.control.mu.Unlock()
	if c.control.closed {
		return nil, ErrClosed
	}
	if c.control.ctrl != nil {
		return c.control.ctrl, nil
	}
	ctrl, err := revoke.Dial(ctx, c.url, revoke.WithLogger(c.log), revoke.WithConnectionName(c.cfg.name+"-control"),
		revoke.WithTLS(c.cfg.tls), revoke.WithBackoff(c.cfg.backoff), revoke.WithFailover(c.cfg.failover.String()))
	if err != nil {
		return nil, fmt.Errorf("stalk: remote control: %w", trimPrefix(err))
	}
	c.control.ctrl = ctrl
	return ctrl, nil
}

func (c *Client) closeControl() {
	c.control.mu.Lock()
	ctrl := c.control.ctrl
	c.control.closed = true
	c.control.mu.Unlock()
	if ctrl != nil {
		ctrl.Close()
	}
}
