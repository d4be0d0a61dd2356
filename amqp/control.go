package amqp

import (
	"context"
	"sync"

	"github.com/stalk-dev/stalk/revoke"
)

// controlExt holds the lazily created remote-control Controller.
type controlExt struct {
	once sync.Once
	ctrl *revoke.Controller
}

// Control returns the client's remote-control Controller (revoke, ping,
// inspect), created on first use on the client's publishing connection. It
// is closed by Close.
func (c *Client) Control() *revoke.Controller {
	c.control.once.Do(func() {
		c.control.ctrl = revoke.NewController(c.pubConn, c.log)
	})
	return c.control.ctrl
}

// Revoke implements result.Revoker: one broadcast for all ids. See
// revoke.Controller.Revoke.
func (c *Client) Revoke(ctx context.Context, ids []string, opts ...revoke.Option) ([]revoke.Reply, error) {
	return c.Control().Revoke(ctx, ids, opts...)
}

// RevokeByStampedHeaders implements result.Revoker.
func (c *Client) RevokeByStampedHeaders(ctx context.Context, headers map[string][]string, opts ...revoke.Option) ([]revoke.Reply, error) {
	return c.Control().RevokeByStampedHeaders(ctx, headers, opts...)
}

func (c *Client) closeControl() {
	c.control.once.Do(func() {}) // no Controller may be created after Close
	if c.control.ctrl != nil {
		c.control.ctrl.Close()
	}
}
