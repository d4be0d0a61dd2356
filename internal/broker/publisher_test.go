package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConnLost(t *testing.T) {
	write := &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}
	for _, err := range []error{amqp091.ErrClosed, write, fmt.Errorf("wrapped: %w", write), io.EOF, syscall.EPIPE} {
		assert.True(t, ConnLost(err), "%v", err)
	}
	for _, err := range []error{errors.New("bad frame"), amqp091.ErrFieldType} {
		assert.False(t, ConnLost(err), "%v", err)
	}
}

func TestMissingExchange(t *testing.T) {
	name, ok := missingExchange(&amqp091.Error{Code: 404, Reason: "NOT_FOUND - no exchange 'celery_delayed_27' in vhost '/'"})
	require.True(t, ok)
	assert.Equal(t, "celery_delayed_27", name)
	_, ok = missingExchange(&amqp091.Error{Code: 404, Reason: "NOT_FOUND - no queue 'q' in vhost '/'"})
	assert.False(t, ok)
}

func newTestChannel() *pubChannel {
	return &pubChannel{waiters: map[uint64]*waiter{}, abandoned: map[uint64]struct{}{}, dead: make(chan struct{})}
}

func publishAs(pc *pubChannel, tag uint64, m Message) *waiter {
	w := &waiter{m: &m, tag: tag, done: make(chan struct{})}
	pc.register(w)
	return w
}

// The router's bookkeeping, with no broker: returns are matched to the
// oldest unconfirmed publish of the same message, the confirms of
// abandoned publishes are dropped, and a closed channel settles everything
// still waiting as lost.
func TestRouterBookkeeping(t *testing.T) {
	pc := newTestChannel()
	a := Message{Exchange: "", Key: "q", Msg: amqp091.Publishing{CorrelationId: "a", Body: []byte("x")}}
	b := Message{Exchange: "", Key: "q", Msg: amqp091.Publishing{CorrelationId: "b", Body: []byte("x")}}
	wa, wb := publishAs(pc, 1, a), publishAs(pc, 2, b)
	pc.markReturned(&amqp091.Return{ReplyCode: 312, ReplyText: "NO_ROUTE", RoutingKey: "q", CorrelationId: "b", Body: []byte("x")})
	pc.confirm(amqp091.Confirmation{DeliveryTag: 1, Ack: true})
	pc.confirm(amqp091.Confirmation{DeliveryTag: 2, Ack: true})
	<-wa.done
	<-wb.done
	assert.Nil(t, wa.returned)
	require.NotNil(t, wb.returned)
	assert.EqualValues(t, 312, wb.returned.ReplyCode)
	assert.True(t, wa.ack && !wa.lost)

	// A nack.
	wc := publishAs(pc, 3, a)
	pc.confirm(amqp091.Confirmation{DeliveryTag: 3, Ack: false})
	<-wc.done
	assert.False(t, wc.ack)

	// An abandoned publish: its late confirm is dropped, not kept.
	wd := publishAs(pc, 4, a)
	pc.unregister(wd)
	pc.confirm(amqp091.Confirmation{DeliveryTag: 4, Ack: true})
	assert.Empty(t, pc.waiters)
	assert.Empty(t, pc.abandoned)

	// Close: what still waits is lost, and later registrations too.
	we := publishAs(pc, 5, a)
	pc.shutdown(&amqp091.Error{Code: 404, Reason: "NOT_FOUND - no exchange 'x' in vhost '/'"})
	<-we.done
	assert.True(t, we.lost)
	wf := publishAs(pc, 6, a)
	<-wf.done
	assert.True(t, wf.lost)
	assert.EqualValues(t, 404, pc.closeErr().Code)
}

// The router settles confirms and returns from amqp091-go's channels in
// order, and drains what was buffered before a close.
func TestRouterDrainsBeforeClose(t *testing.T) {
	pc := newTestChannel()
	confirms := make(chan amqp091.Confirmation, 4)
	returns := make(chan amqp091.Return, 4)
	closes := make(chan *amqp091.Error, 1)
	m := Message{Key: "q", Msg: amqp091.Publishing{CorrelationId: "a"}}
	w1, w2 := publishAs(pc, 1, m), publishAs(pc, 2, m)
	returns <- amqp091.Return{RoutingKey: "q", CorrelationId: "a", ReplyCode: 312}
	confirms <- amqp091.Confirmation{DeliveryTag: 1, Ack: true}
	confirms <- amqp091.Confirmation{DeliveryTag: 2, Ack: true}
	closes <- nil
	close(closes)
	close(confirms)
	close(returns)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); pc.route(confirms, returns, closes) }()
	wg.Wait()
	<-w1.done
	<-w2.done
	assert.False(t, w1.lost, "confirmed before the close")
	assert.False(t, w2.lost, "confirmed before the close")
	assert.NotNil(t, w1.returned, "the oldest publish of the message was returned")
	assert.Nil(t, w2.returned)
}

func TestUnprefixed(t *testing.T) {
	err := Unprefixed(fmt.Errorf("stalk: x: %w", ErrNotConfirmed))
	assert.Equal(t, "x: stalk: broker did not confirm the publish", err.Error())
	assert.ErrorIs(t, err, ErrNotConfirmed)
	assert.Equal(t, "plain", Unprefixed(errors.New("plain")).Error())
	assert.Nil(t, Unprefixed(nil))
}

func TestHomeNodeDown(t *testing.T) {
	node, ok := HomeNodeDown(fmt.Errorf("declare: %w", &amqp091.Error{Code: 404, Reason: "NOT_FOUND - home node 'stalkc1@localhost' of durable queue 'cq1' in vhost '/' is down or inaccessible"}))
	assert.True(t, ok)
	assert.Equal(t, "stalkc1@localhost", node)
	_, ok = HomeNodeDown(&amqp091.Error{Code: 404, Reason: "NOT_FOUND - no queue 'q' in vhost '/'"})
	assert.False(t, ok)
	_, ok = HomeNodeDown(errors.New("home node 'x' of durable queue 'q' is down or inaccessible"))
	assert.False(t, ok, "only the broker's 404 says so")
}
