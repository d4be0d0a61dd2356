package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sync"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// Message is one publish.
type Message struct {
	Exchange string
	Key      string
	// Mandatory asks the broker to return the message when it routes to no
	// queue: Publish then fails with an error wrapping ErrUnroutable
	// instead of reporting a confirmed drop.
	Mandatory bool
	Msg       amqp091.Publishing
}

// Publisher publishes with publisher confirms on a channel of its own on a
// supervised connection. It is safe for concurrent use; publishes share
// one channel, and each waits for its own confirm.
//
// A publish whose channel or connection dies before the broker confirmed
// it is published again on the next channel (at least once: the message
// may reach its queue twice). One that routes nowhere comes back with
// Mandatory (ErrUnroutable). One to an exchange that does not exist is a
// final error (ErrExchangeNotFound): named exchanges are checked with a
// passive declare, once per connection, before their first publish, so a
// missing one never closes the shared channel; if it closes anyway (the
// exchange was deleted since) only the publishes to that exchange fail,
// and the others go out again on a new channel of the same connection.
//
// Goroutines: one router per channel reads the channel's confirms,
// returns and close notification and settles the waiting publishes; it
// never blocks on a caller.
type Publisher struct {
	conn *Conn
	log  zerolog.Logger

	mu    sync.Mutex
	cur   *pubChannel
	open  sync.Mutex // serialises opening channels
	facts *facts     // what is known about the current connection's topology
	wg    sync.WaitGroup
}

// NewPublisher returns a Publisher on conn. It opens its channel on first
// use and again after every reconnect.
func NewPublisher(conn *Conn, log zerolog.Logger) *Publisher {
	return &Publisher{conn: conn, log: log}
}

// Conn returns the connection the Publisher publishes on.
func (p *Publisher) Conn() *Conn { return p.conn }

// Close waits for the Publisher's goroutines. Close the connection first.
func (p *Publisher) Close() {
	p.mu.Lock()
	pc := p.cur
	p.mu.Unlock()
	if pc != nil {
		_ = pc.ch.Close()
	}
	p.wg.Wait()
}

// pubChannel is one confirm-mode channel and what waits on it.
type pubChannel struct {
	ch   *amqp091.Channel
	conn *amqp091.Connection

	// pubMu makes "take the next delivery tag, register a waiter for it,
	// publish" one step, so that a return or a confirm always finds its
	// waiter (amqp091-go serialises publishes on a channel anyway).
	pubMu sync.Mutex

	mu        sync.Mutex
	waiters   map[uint64]*waiter  // by delivery tag, until confirmed
	abandoned map[uint64]struct{} // tags whose publisher stopped waiting (ctx ended)
	closed    bool
	err       *amqp091.Error // why the channel closed, if the broker said
	dead      chan struct{}
}

type waiter struct {
	m        *Message
	tag      uint64
	done     chan struct{}
	ack      bool
	returned *amqp091.Return
	lost     bool // the channel closed before the confirm
}

func (pc *pubChannel) isDead() bool {
	select {
	case <-pc.dead:
		return true
	default:
		return pc.ch.IsClosed()
	}
}

// route is the channel's router goroutine. amqp091-go hands a basic.return
// to its listener before it reads the basic.ack of the same message, so
// by the time a confirm is received here, every return that came before it
// on the wire is in the returns channel's buffer: the router drains that
// buffer before it settles each confirm, and so always records a return
// before it sees the confirm of the message that was returned.
func (pc *pubChannel) route(confirms <-chan amqp091.Confirmation, returns <-chan amqp091.Return, closes <-chan *amqp091.Error) {
	for confirms != nil || returns != nil || closes != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			pc.markReturned(&r)
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			returns = pc.drainReturns(returns)
			pc.confirm(c)
		case e, ok := <-closes:
			if !ok {
				closes = nil
			}
			// What was confirmed or returned before the close is settled
			// first: amqp091-go has already handed it over.
			returns, confirms = pc.drain(returns, confirms)
			pc.shutdown(e)
		}
	}
	pc.shutdown(nil)
}

// drain settles the returns and confirms already buffered, and returns
// the channels that are still open.
func (pc *pubChannel) drain(returns <-chan amqp091.Return, confirms <-chan amqp091.Confirmation) (<-chan amqp091.Return, <-chan amqp091.Confirmation) {
	returns = pc.drainReturns(returns)
	for confirms != nil {
		select {
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			returns = pc.drainReturns(returns)
			returns = pc.drainReturns(returns)
			pc.confirm(c)
			continue
		default:
		}
		break
	}
	return returns, confirms
}

// drainReturns records every return already buffered, and returns the
// channel, or nil once it is closed.
func (pc *pubChannel) drainReturns(returns <-chan amqp091.Return) <-chan amqp091.Return {
	for returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				return nil
			}
			pc.markReturned(&r)
			continue
		default:
		}
		break
	}
	return returns
}

func (pc *pubChannel) markReturned(r *amqp091.Return) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	var first *waiter
	for _, w := range pc.waiters {
		if w.returned != nil || !sameMessage(w.m, r) {
			continue
		}
		if first == nil || w.tag < first.tag {
			first = w
		}
	}
	if first != nil {
		first.returned = r
	}
}

// sameMessage reports whether r is the return of m: same exchange, key,
// correlation and message id, and body.
func sameMessage(m *Message, r *amqp091.Return) bool {
	return m.Exchange == r.Exchange && m.Key == r.RoutingKey && m.Msg.CorrelationId == r.CorrelationId &&
		m.Msg.MessageId == r.MessageId && bytes.Equal(m.Msg.Body, r.Body)
}

func (pc *pubChannel) confirm(c amqp091.Confirmation) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	w := pc.waiters[c.DeliveryTag]
	if w == nil {
		delete(pc.abandoned, c.DeliveryTag)
		return
	}
	delete(pc.waiters, c.DeliveryTag)
	w.ack = c.Ack
	close(w.done)
}

func (pc *pubChannel) shutdown(e *amqp091.Error) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if e != nil && pc.err == nil {
		pc.err = e
	}
	if pc.closed {
		return
	}
	pc.closed = true
	for tag, w := range pc.waiters {
		delete(pc.waiters, tag)
		w.lost = true
		close(w.done)
	}
	close(pc.dead)
}

// register starts waiting for tag's confirm.
func (pc *pubChannel) register(w *waiter) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed {
		w.lost = true
		close(w.done)
		return
	}
	pc.waiters[w.tag] = w
}

// unregister stops waiting for w's confirm: its publisher gave up.
func (pc *pubChannel) unregister(w *waiter) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if _, waiting := pc.waiters[w.tag]; waiting {
		delete(pc.waiters, w.tag)
		if !pc.closed {
			pc.abandoned[w.tag] = struct{}{}
		}
	}
}

func (pc *pubChannel) closeErr() *amqp091.Error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.err
}

// channel returns a live publishing channel on the current connection,
// opening one if needed.
func (p *Publisher) channel(ctx context.Context) (*pubChannel, error) {
	for {
		conn, err := p.conn.Connection(ctx)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		pc := p.cur
		p.mu.Unlock()
		if pc != nil && pc.conn == conn && !pc.isDead() {
			return pc, nil
		}
		pc, err = p.openOn(conn)
		if err == nil {
			return pc, nil
		}
		if !conn.IsClosed() {
			return nil, fmt.Errorf("open publishing channel: %w", err)
		}
		// The connection went down meanwhile: wait for the next one.
	}
}

func (p *Publisher) openOn(conn *amqp091.Connection) (*pubChannel, error) {
	p.open.Lock()
	defer p.open.Unlock()
	p.mu.Lock()
	if pc := p.cur; pc != nil && pc.conn == conn && !pc.isDead() {
		p.mu.Unlock()
		return pc, nil
	}
	p.mu.Unlock()
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	pc := &pubChannel{
		ch: ch, conn: conn,
		waiters:   make(map[uint64]*waiter),
		abandoned: make(map[uint64]struct{}),
		dead:      make(chan struct{}),
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 256))
	returns := ch.NotifyReturn(make(chan amqp091.Return, 16))
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		pc.route(confirms, returns, closes)
	}()
	p.mu.Lock()
	p.cur = pc
	if p.facts == nil || p.facts.conn != conn {
		p.facts = newFacts(conn)
	}
	p.mu.Unlock()
	return pc, nil
}

// Publish publishes m and returns once the broker has confirmed it. While
// the broker is unreachable, or blocks publishing (a resource alarm), it
// waits until ctx ends; ctx also bounds the wait for the confirm, and an
// error then wraps ErrNotConfirmed: the broker may still deliver the
// message. Errors wrap ErrUnroutable, ErrExchangeNotFound, ErrNotConfirmed
// or ErrClosed.
func (p *Publisher) Publish(ctx context.Context, m Message) error {
	for {
		if err := p.conn.WaitReady(ctx); err != nil {
			return waitErr(ctx, p.conn, err)
		}
		if err := p.conn.WaitUnblocked(ctx); err != nil {
			return err
		}
		pc, err := p.channel(ctx)
		if err != nil {
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return waitErr(ctx, p.conn, err)
			}
			return err
		}
		if m.Exchange != "" {
			ok, err := p.ExchangeExists(ctx, m.Exchange)
			if err != nil {
				if connLost(err) || p.conn.State() != Ready {
					continue
				}
				return err
			}
			if !ok {
				return &ExchangeNotFoundError{Exchange: m.Exchange}
			}
		}
		w, err := pc.publish(ctx, &m)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("publish: %w", ctx.Err())
			}
			if pc.isDead() || connLost(err) {
				// The socket broke or the channel closed before amqp091-go
				// noticed; publish again on the next channel.
				p.log.Debug().Err(err).Msg("publish failed on a broken channel; publishing again")
				p.waitDead(ctx, pc)
				continue
			}
			return fmt.Errorf("publish: %w", err)
		}
		select {
		case <-w.done:
		case <-ctx.Done():
			pc.unregister(w)
			if p.conn.Blocked() {
				return fmt.Errorf("%w: the broker is blocking publishes (resource alarm); the message may still be delivered once it clears: %w", ErrNotConfirmed, ctx.Err())
			}
			return fmt.Errorf("%w before ctx ended (a quorum queue that lost its majority confirms nothing); the message may still be delivered: %w", ErrNotConfirmed, ctx.Err())
		}
		switch {
		case w.lost:
			if e := pc.closeErr(); e != nil && e.Code == amqp091.NotFound {
				if name, ok := missingExchange(e); ok {
					p.forgetExchange(pc.conn, name)
					if name == m.Exchange {
						return &ExchangeNotFoundError{Exchange: m.Exchange, Err: e}
					}
				}
			}
			p.log.Debug().Msg("channel closed before the confirm; publishing again")
			continue
		case w.returned != nil:
			return &UnroutableError{Exchange: m.Exchange, Key: m.Key, Code: w.returned.ReplyCode, Text: w.returned.ReplyText}
		case !w.ack:
			return fmt.Errorf("%w: the broker nacked it (a queue refused it: full with x-overflow=reject-publish, or an internal error)", ErrNotConfirmed)
		}
		return nil
	}
}

// publish registers a waiter for the next delivery tag and publishes m
// under it.
func (pc *pubChannel) publish(ctx context.Context, m *Message) (*waiter, error) {
	pc.pubMu.Lock()
	defer pc.pubMu.Unlock()
	w := &waiter{m: m, tag: pc.ch.GetNextPublishSeqNo(), done: make(chan struct{})}
	pc.register(w)
	dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, m.Exchange, m.Key, m.Mandatory, false, m.Msg)
	if err != nil {
		pc.mu.Lock()
		if pc.waiters[w.tag] == w {
			delete(pc.waiters, w.tag) // the tag was not used: amqp091-go gives it to the next publish
		}
		pc.mu.Unlock()
		return nil, err
	}
	if dc.DeliveryTag != w.tag {
		// Cannot happen while every publish on the channel goes through
		// here. If it ever does, the bookkeeping is off: drop the channel,
		// and the publish goes out again on a new one.
		_ = pc.ch.Close()
		return nil, fmt.Errorf("publish got delivery tag %d, expected %d: %w", dc.DeliveryTag, w.tag, amqp091.ErrClosed)
	}
	return w, nil
}

// waitDead waits, briefly, for a channel that failed a publish to be
// reported closed, so that the next attempt opens a new one.
func (p *Publisher) waitDead(ctx context.Context, pc *pubChannel) {
	t := time.NewTimer(100 * time.Millisecond)
	defer t.Stop()
	select {
	case <-pc.dead:
	case <-t.C:
	case <-ctx.Done():
	}
}

var notFoundExchange = regexp.MustCompile(`no exchange '((?:[^']|'')*)' in vhost`)

// missingExchange reads the exchange name from a 404 channel close.
func missingExchange(e *amqp091.Error) (string, bool) {
	m := notFoundExchange.FindStringSubmatch(e.Reason)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// connLost reports whether err from a publish or a declaration means the
// connection or channel is gone: a closed channel or connection, or a
// failed write on the socket.
func connLost(err error) bool {
	var ne net.Error
	return errors.Is(err, amqp091.ErrClosed) || errors.As(err, &ne) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// ConnLost reports whether err means the connection or the channel it was
// returned on is gone, so that the operation can be tried again on the
// next one.
func ConnLost(err error) bool { return connLost(err) }

// waitErr describes a wait for the broker that ended.
func waitErr(ctx context.Context, conn *Conn, err error) error {
	if errors.Is(err, ErrClosed) {
		return ErrClosed
	}
	if ctx.Err() != nil {
		if last := conn.LastError(); last != nil {
			return fmt.Errorf("waiting for the broker (%s, last error: %v): %w", conn.State(), last, err)
		}
		return fmt.Errorf("waiting for the broker (%s): %w", conn.State(), err)
	}
	return err
}

// WaitErr is waitErr for the other packages: it wraps a failed wait for
// conn with the connection's state and last error.
func WaitErr(ctx context.Context, conn *Conn, err error) error { return waitErr(ctx, conn, err) }
