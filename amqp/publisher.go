package amqp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stalk-dev/stalk/internal/broker"
)

// publisher owns the publishing connection's confirm-mode channel.
type publisher struct {
	conn *broker.Conn
	log  zerolog.Logger
	cfg  *config

	mu       sync.Mutex
	ch       *amqp091.Channel
	gen      uint64
	declared map[string]bool
	dmu      sync.Mutex // serialises topology declarations
}

func (p *publisher) hook(ctx context.Context, conn *amqp091.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("stalk: open publish channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("stalk: enable publisher confirms: %w", err)
	}
	p.mu.Lock()
	p.ch = ch
	p.gen++
	p.declared = make(map[string]bool)
	p.mu.Unlock()
	if p.cfg.declareDefault {
		if err := declareTaskQueue(conn, p.cfg.defaultQueue, p.log); err != nil {
			return err
		}
		p.mu.Lock()
		p.declared[p.cfg.defaultQueue] = true
		p.mu.Unlock()
	}
	return nil
}

// declareTaskQueue declares Celery's topology for a task queue on a
// throwaway channel: a direct durable exchange named after the queue, the
// durable queue, and the binding (Celery's exact flags). A queue that
// already exists with other arguments (x-max-priority, a quorum queue) is
// left as it is.
func declareTaskQueue(conn *amqp091.Connection, q string, log zerolog.Logger) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("stalk: open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.ExchangeDeclare(q, "direct", true, false, false, false, nil); err != nil {
		return declareErr("exchange", q, err, log)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		if derr := declareErr("queue", q, err, log); derr != nil {
			return derr
		}
		// The channel is closed by the 406: bind on a fresh one.
		ch2, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("stalk: open channel: %w", err)
		}
		defer ch2.Close()
		ch = ch2
	}
	if err := ch.QueueBind(q, q, q, false, nil); err != nil {
		return declareErr("binding", q, err, log)
	}
	return nil
}

func declareErr(what, name string, err error, log zerolog.Logger) error {
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.PreconditionFailed {
		log.Warn().Str(what, name).Err(err).Msg("exists with other arguments; using it as it is")
		return nil
	}
	return fmt.Errorf("stalk: declare %s %q: %w", what, name, err)
}

// ErrNotConfirmed is wrapped when the broker did not confirm a publish.
var ErrNotConfirmed = errors.New("stalk: broker did not confirm the publish")

// publish sends msg and waits for the broker's confirm. While the
// connection is down, or the broker blocks publishing, it waits until ctx
// ends. A publish whose channel dies before the confirm is sent again on the
// next connection (at-least-once: the task id stays the same).
func (p *publisher) publish(ctx context.Context, exchange, key, declare string, pub amqp091.Publishing) error {
	for {
		if err := waitBroker(ctx, p.conn); err != nil {
			return fmt.Errorf("stalk: publish: %w", err)
		}
		conn, err := p.conn.Connection(ctx)
		if err != nil {
			return fmt.Errorf("stalk: publish: waiting for the broker: %w", closedErr(err))
		}
		if err := p.conn.WaitUnblocked(ctx); err != nil {
			return closedErr(err)
		}
		p.mu.Lock()
		ch, need := p.ch, declare != "" && !p.declared[declare]
		p.mu.Unlock()
		if ch == nil || ch.IsClosed() {
			if err := p.waitNewChannel(ctx, ch); err != nil {
				return err
			}
			continue
		}
		if need {
			p.dmu.Lock()
			p.mu.Lock()
			need = !p.declared[declare]
			p.mu.Unlock()
			if need {
				if err := declareTaskQueue(conn, declare, p.log); err != nil {
					p.dmu.Unlock()
					if conn.IsClosed() {
						continue
					}
					return err
				}
				p.mu.Lock()
				if p.ch == ch {
					p.declared[declare] = true
				}
				p.mu.Unlock()
			}
			p.dmu.Unlock()
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false, pub)
		if err != nil {
			if ch.IsClosed() {
				continue
			}
			if connLost(err) {
				// The socket broke before amqp091-go noticed: it closes the
				// connection next. Publish again on the next one.
				p.log.Debug().Err(err).Msg("publish failed on a broken connection; publishing again")
				if err := p.waitNewChannel(ctx, ch); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("stalk: publish: %w", err)
		}
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			if p.conn.Blocked() {
				// The alarm started with this publish: the broker holds it
				// unconfirmed until the alarm clears.
				return fmt.Errorf("%w: the broker is blocking publishes (resource alarm): %w", ErrNotConfirmed, err)
			}
			return fmt.Errorf("%w: %w", ErrNotConfirmed, err)
		}
		if ok {
			return nil
		}
		if ch.IsClosed() {
			p.log.Debug().Msg("channel closed before the confirm; publishing again")
			continue
		}
		return fmt.Errorf("%w: the broker nacked it", ErrNotConfirmed)
	}
}

// connLost reports whether err from a publish means the connection is gone:
// a closed channel or connection, or a failed write on the socket.
func connLost(err error) bool {
	var ne net.Error
	return errors.Is(err, amqp091.ErrClosed) || errors.As(err, &ne) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// waitNewChannel waits until the hook has installed a channel other than old.
func (p *publisher) waitNewChannel(ctx context.Context, old *amqp091.Channel) error {
	for {
		p.mu.Lock()
		ch := p.ch
		p.mu.Unlock()
		if ch != old && ch != nil && !ch.IsClosed() {
			return nil
		}
		if ch == old && ch != nil && ch.IsClosed() && p.conn.State() == broker.Ready {
			// The channel died under a live connection.
			p.conn.Reset(errors.New("publish channel closed"))
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("stalk: publish: waiting for the broker: %w", err)
		}
		if _, err := p.conn.Connection(ctx); err != nil {
			return fmt.Errorf("stalk: publish: waiting for the broker: %w", closedErr(err))
		}
	}
}
