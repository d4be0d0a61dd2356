package broker

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// missingRecheck is how long a missing exchange is remembered before it is
// looked for again: long enough that a burst of publishes to a missing
// exchange costs one round trip, short enough that an exchange a worker
// declares later is picked up.
const missingRecheck = 5 * time.Second

// facts is what a Publisher knows of one connection's topology: which
// exchanges exist, and which declarations have been made on it. A new
// connection starts with none (the broker may have restarted, or be
// another node).
type facts struct {
	conn *amqp091.Connection

	mu        sync.Mutex
	exchanges map[string]exchangeFact
	ensured   map[string]bool
	ensureMu  sync.Mutex // serialises declarations
}

type exchangeFact struct {
	exists bool
	at     time.Time
}

func newFacts(conn *amqp091.Connection) *facts {
	return &facts{conn: conn, exchanges: make(map[string]exchangeFact), ensured: make(map[string]bool)}
}

// current returns the facts of the current connection, waiting for it.
func (p *Publisher) current(ctx context.Context) (*facts, error) {
	if _, err := p.channel(ctx); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.facts, nil
}

// ExchangeExists reports whether the named exchange exists, asking the
// broker with a passive declare on a throwaway channel (a missing exchange
// closes the channel it is asked on) the first time on each connection.
// The default exchange "" always exists.
func (p *Publisher) ExchangeExists(ctx context.Context, name string) (bool, error) {
	if name == "" {
		return true, nil
	}
	f, err := p.current(ctx)
	if err != nil {
		return false, err
	}
	f.mu.Lock()
	fact, known := f.exchanges[name]
	f.mu.Unlock()
	if known && (fact.exists || time.Since(fact.at) < missingRecheck) {
		return fact.exists, nil
	}
	exists, err := ExchangeExistsOn(f.conn, name)
	if err != nil {
		return false, err
	}
	f.mu.Lock()
	f.exchanges[name] = exchangeFact{exists: exists, at: time.Now()}
	f.mu.Unlock()
	return exists, nil
}

// forgetExchange drops what is known of an exchange on conn (it was
// reported missing by a channel close).
func (p *Publisher) forgetExchange(conn *amqp091.Connection, name string) {
	p.mu.Lock()
	f := p.facts
	p.mu.Unlock()
	if f == nil || f.conn != conn {
		return
	}
	f.mu.Lock()
	f.exchanges[name] = exchangeFact{exists: false, at: time.Now()}
	f.mu.Unlock()
}

// Ensure runs declare once per connection for key: the first call on a
// new connection runs it (on conn, where it opens the channels it needs),
// later calls return at once. A failed declare is not remembered, so the
// next call tries again. Declarations are serialised.
func (p *Publisher) Ensure(ctx context.Context, key string, declare func(conn *amqp091.Connection) error) error {
	for {
		f, err := p.current(ctx)
		if err != nil {
			return err
		}
		f.mu.Lock()
		done := f.ensured[key]
		f.mu.Unlock()
		if done {
			return nil
		}
		f.ensureMu.Lock()
		f.mu.Lock()
		done = f.ensured[key]
		f.mu.Unlock()
		if done {
			f.ensureMu.Unlock()
			return nil
		}
		err = declare(f.conn)
		if err == nil {
			f.mu.Lock()
			f.ensured[key] = true
			f.mu.Unlock()
		}
		f.ensureMu.Unlock()
		if err != nil && f.conn.IsClosed() && ctx.Err() == nil && p.conn.State() != Closed {
			continue // the connection dropped under the declaration: do it on the next one
		}
		return err
	}
}

// ExchangeExistsOn checks for an exchange with a passive declare on a
// throwaway channel of conn.
func ExchangeExistsOn(conn *amqp091.Connection, name string) (bool, error) {
	ch, err := conn.Channel()
	if err != nil {
		return false, err
	}
	defer ch.Close()
	if err := ch.ExchangeDeclarePassive(name, "direct", true, false, false, false, nil); err != nil {
		if IsCode(err, amqp091.NotFound) {
			return false, nil
		}
		return false, fmt.Errorf("look for exchange %q: %w", name, err)
	}
	return true, nil
}

// QueueExistsOn checks for a queue with a passive declare on a throwaway
// channel of conn, and returns its message and consumer counts.
func QueueExistsOn(conn *amqp091.Connection, name string) (amqp091.Queue, bool, error) {
	ch, err := conn.Channel()
	if err != nil {
		return amqp091.Queue{}, false, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		if IsCode(err, amqp091.NotFound) {
			return amqp091.Queue{}, false, nil
		}
		return amqp091.Queue{}, false, fmt.Errorf("look for queue %q: %w", name, err)
	}
	return q, true, nil
}

// ConsumeProbe sets up a consumer on queue on a channel of its own, and
// closes the channel again: whether a consumer can be set up there now
// (a classic queue whose home node is down refuses it with a 404 that
// HomeNodeDown reads). A message delivered to the probe before the close
// goes back to the queue.
func ConsumeProbe(conn *amqp091.Connection, queue string) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Qos(1, 0, false); err != nil {
		return err
	}
	_, err = ch.Consume(queue, "", false, false, false, false, nil)
	return err
}

// IsCode reports whether err is an AMQP error with the given reply code.
func IsCode(err error, code int) bool {
	var ae *amqp091.Error
	return errors.As(err, &ae) && ae.Code == code
}

var homeNodeDown = regexp.MustCompile(`home node '([^']+)' of durable queue '((?:[^']|'')*)'.* is down or inaccessible`)

// HomeNodeDown reports whether err says that a classic queue's home node
// is down (RabbitMQ's 404 "home node 'rabbit@b' of durable queue 'q' in
// vhost '/' is down or inaccessible"), and names the node.
func HomeNodeDown(err error) (node string, ok bool) {
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.NotFound {
		return "", false
	}
	m := homeNodeDown.FindStringSubmatch(ae.Reason)
	if m == nil {
		return "", false
	}
	return m[1], true
}
