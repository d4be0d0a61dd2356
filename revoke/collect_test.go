package revoke

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// bare returns a Controller with no connection, enough to exercise
// dispatch and collect.
func bare(t *testing.T) *Controller {
	c := &Controller{
		log:        zerolog.Nop(),
		collectors: make(map[string]*collector),
		unclaimed:  make(map[string]*stash),
	}
	c.life, c.cancel = context.WithCancel(context.Background())
	t.Cleanup(c.cancel)
	return c
}

func delivery(ticket string, body string) amqp091.Delivery {
	return amqp091.Delivery{
		ContentType: "application/json", ContentEncoding: "utf-8",
		Headers: amqp091.Table{"ticket": ticket, "clock": int32(40)},
		Body:    []byte(body),
	}
}

func TestDispatchRoutesByTicket(t *testing.T) {
	c := bare(t)
	col := c.register("t1")
	c.dispatch(delivery("t1", `{"a@h": {"ok": "pong"}}`))
	c.dispatch(delivery("t2", `{"b@h": {"ok": "pong"}}`))
	assert.Equal(t, []Reply{{Worker: "a@h", OK: "pong", Value: []byte(`{"ok": "pong"}`)}}, col.take())
	assert.Equal(t, int64(42), c.clock, "the Lamport clock follows the replies: max(local, 40)+1, twice")

	// The other ticket's reply is stashed, and claimed by its collector.
	col2 := c.register("t2")
	got := col2.take()
	require.Len(t, got, 1)
	assert.Equal(t, "b@h", got[0].Worker)
	assert.Empty(t, c.unclaimed)
	assert.Zero(t, c.Dropped())
}

func TestDispatchDrops(t *testing.T) {
	c := bare(t)
	col := c.register("t1")
	expired := delivery("t1", `{"a@h": {"ok": "pong"}}`)
	expired.Headers["expires"] = float64(time.Now().Add(-time.Second).Unix())
	c.dispatch(expired)
	pickle := delivery("t1", `{"a@h": {"ok": "pong"}}`)
	pickle.ContentType = "application/x-python-serialize"
	c.dispatch(pickle)
	c.dispatch(delivery("t1", `not json`))
	c.dispatch(delivery("t1", `{"a@h": {"ok": "pong"}`))
	assert.Empty(t, col.take())
	assert.Equal(t, uint64(4), c.Dropped())

	fresh := delivery("t1", `{"a@h": {"ok": "pong"}}`)
	fresh.Headers["expires"] = float64(time.Now().Add(time.Minute).Unix())
	c.dispatch(fresh)
	assert.Len(t, col.take(), 1)
}

func TestStashIsBounded(t *testing.T) {
	c := bare(t)
	for i := range maxUnclaimed + 10 {
		c.dispatch(delivery(fmt.Sprint("t", i), `{"a@h": {"ok": "pong"}}`))
	}
	assert.Len(t, c.unclaimed, maxUnclaimed)
	assert.Equal(t, uint64(10), c.Dropped())
}

func TestTick(t *testing.T) {
	c := bare(t)
	assert.Equal(t, int64(1), c.tick())
	assert.Equal(t, int64(2), c.tick())
	c.observe(100)
	assert.Equal(t, int64(102), c.tick())
	c.observe(5)
	assert.Equal(t, int64(104), c.tick())
}

func TestCollectIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := bare(t)
		col := c.register("t")
		o := Options{Reply: true, Timeout: time.Second}
		go func() {
			// Replies 0.9 s apart keep the collection open: the timeout is
			// an idle gap, not a deadline.
			for i := range 3 {
				time.Sleep(900 * time.Millisecond)
				c.dispatch(delivery("t", fmt.Sprintf(`{"w%d@h": {"ok": "pong"}}`, i)))
			}
		}()
		start := time.Now()
		rs, err := c.collect(context.Background(), "ping", col, o)
		require.NoError(t, err)
		assert.Len(t, rs, 3)
		assert.Equal(t, 2700*time.Millisecond+time.Second, time.Since(start))
	})
}

func TestCollectLimitAndDuplicates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := bare(t)
		col := c.register("t")
		o := Options{Reply: true, Timeout: time.Hour, Limit: 2}
		c.dispatch(delivery("t", `{"a@h": {"ok": "1"}}`))
		c.dispatch(delivery("t", `{"a@h": {"ok": "again"}}`))
		go func() {
			time.Sleep(time.Second)
			c.dispatch(delivery("t", `{"b@h": {"ok": "2"}}`))
		}()
		start := time.Now()
		rs, err := c.collect(context.Background(), "ping", col, o)
		require.NoError(t, err)
		assert.Equal(t, []string{"a@h", "b@h"}, []string{rs[0].Worker, rs[1].Worker})
		assert.Equal(t, "1", rs[0].OK, "a worker's second reply is dropped")
		assert.Equal(t, time.Second, time.Since(start), "the limit ends the collection at once")
	})
}

func TestCollectContextAndClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := bare(t)
		col := c.register("t")
		c.dispatch(delivery("t", `{"a@h": {"ok": "pong"}}`))
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		rs, err := c.collect(ctx, "ping", col, Options{Reply: true, Timeout: time.Hour})
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Len(t, rs, 1, "replies gathered so far are returned")

		go func() {
			time.Sleep(time.Second)
			c.cancel()
		}()
		_, err = c.collect(context.Background(), "ping", col, Options{Reply: true, Timeout: time.Hour})
		assert.ErrorIs(t, err, ErrClosed)
	})
}
