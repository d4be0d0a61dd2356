package echoworker

import (
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Receipt is what the worker received in one task message (Config.Record).
type Receipt struct {
	Exchange    string        // exchange the message was published (or dead-lettered) to
	RoutingKey  string        // its routing key
	Received    time.Time     // when the worker got it
	ETA         string        // eta header; "" when absent or null
	Retries     int64         // retries header
	Redelivered bool          // the broker's redelivered flag
	Headers     amqp091.Table // all headers, as received
}

func newReceipt(d *amqp091.Delivery) Receipt {
	eta, _ := d.Headers["eta"].(string)
	return Receipt{
		Exchange:    d.Exchange,
		RoutingKey:  d.RoutingKey,
		Received:    time.Now(),
		ETA:         eta,
		Retries:     headerInt(d.Headers["retries"]),
		Redelivered: d.Redelivered,
		Headers:     d.Headers,
	}
}

const (
	recordLimit     = 100_000 // task ids remembered
	receiptsPerTask = 64      // receipts kept per task id
)

// recorder keeps the receipts of the last limit task ids, forgetting the
// id first seen longest ago.
type recorder struct {
	mu    sync.Mutex
	limit int
	byID  map[string][]Receipt
	order []string // ids in the order first seen, a ring once full
	next  int      // oldest entry of order once full
}

func newRecorder(limit int) *recorder {
	return &recorder{limit: limit, byID: make(map[string][]Receipt)}
}

func (r *recorder) add(id string, rc Receipt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rs, ok := r.byID[id]; ok {
		if len(rs) >= receiptsPerTask {
			rs = append(rs[:0:0], rs[len(rs)-receiptsPerTask+1:]...)
		}
		r.byID[id] = append(rs, rc)
		return
	}
	if len(r.order) < r.limit {
		r.order = append(r.order, id)
	} else {
		delete(r.byID, r.order[r.next])
		r.order[r.next] = id
		r.next = (r.next + 1) % r.limit
	}
	r.byID[id] = []Receipt{rc}
}

func (r *recorder) last(id string) (Receipt, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.byID[id]
	if len(rs) == 0 {
		return Receipt{}, false
	}
	return rs[len(rs)-1], true
}

func (r *recorder) all(id string) []Receipt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Receipt(nil), r.byID[id]...)
}
