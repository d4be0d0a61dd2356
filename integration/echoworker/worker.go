package echoworker

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// RetryTask is the task name that retries itself: args [times, countdown].
const RetryTask = "echo.retry"

// Config configures a Worker. Only URL and Queue are required; with only
// URL, Queue, Channels, Prefetch and Name set, the worker declares a
// classic durable queue on the default exchange, as it always has.
type Config struct {
	URL      string // AMQP URL of the broker
	Queue    string // queue to consume; declared durable, like Celery's queues
	Channels int    // channels, each with its own consumer; default 4
	Prefetch int    // basic.qos prefetch count per consumer (global=false); default 256
	Name     string // connection_name shown by rabbitmqctl; default "echoworker <Queue>"

	// QueueType is "" or "classic" for a classic queue (no arguments), or
	// "quorum" for x-queue-type=quorum.
	QueueType string
	// Exchange, when set, is declared (durable) and Queue bound to it with
	// RoutingKey, as a Celery worker declares an entry of task_queues.
	Exchange     string
	ExchangeType string // Exchange's type; default "direct"
	RoutingKey   string // binding key; default Queue
	// NoDeclare says the queue (and exchange) exist already: only consume.
	// Exchange, ExchangeType and RoutingKey still describe the queue, for
	// retries.
	NoDeclare bool
	// HoldETA holds a task whose eta header is in the future in memory,
	// unacknowledged (so it keeps a prefetch slot), until its ETA, as a
	// Celery worker on a quorum queue does.
	HoldETA bool
	// DefaultQueue is the task_default_queue of the Celery app the worker
	// stands in for; default "celery", a queue on a direct exchange. It
	// decides how a retry of a task that was delivered through a named
	// exchange is routed (see the package doc).
	DefaultQueue string
	// Record keeps a Receipt of every task message received (the last
	// 100,000 task ids) for Received and Receipts. Off, the hot path does
	// not pay for it.
	Record bool
	// ConfirmResults publishes every result and retry state with
	// publisher confirms and mandatory set, waits for the broker's answer,
	// and reports it to OnResult. Celery's rpc backend does neither; this
	// is for telling, in a soak, a result the broker refused or returned
	// from one it accepted.
	ConfirmResults bool
	// OnResult, with ConfirmResults, is called from the publishing
	// goroutine with the task id and what the broker said of its state
	// message: "acked", "nacked", "returned <code> <text>" (followed by
	// the confirm, as ", acked"), or "no confirm: <error>".
	OnResult func(taskID, outcome string)
}

func (c *Config) validate() error {
	if c.URL == "" {
		return errors.New("echoworker: Config.URL is required")
	}
	if c.Queue == "" {
		return errors.New("echoworker: Config.Queue is required")
	}
	if c.Channels < 0 || c.Prefetch < 0 {
		return errors.New("echoworker: Channels and Prefetch must not be negative")
	}
	switch c.QueueType {
	case "", "classic", "quorum":
	default:
		return fmt.Errorf("echoworker: QueueType %q: want \"\", \"classic\" or \"quorum\"", c.QueueType)
	}
	if c.Exchange == "" && (c.ExchangeType != "" || c.RoutingKey != "") {
		return errors.New("echoworker: ExchangeType and RoutingKey need Exchange")
	}
	if c.Channels == 0 {
		c.Channels = 4
	}
	if c.Prefetch == 0 {
		c.Prefetch = 256
	}
	if c.Name == "" {
		c.Name = "echoworker " + c.Queue
	}
	if c.Exchange != "" && c.ExchangeType == "" {
		c.ExchangeType = "direct"
	}
	if c.RoutingKey == "" {
		c.RoutingKey = c.Queue
	}
	if c.DefaultQueue == "" {
		c.DefaultQueue = "celery"
	}
	return nil
}

// exchangeType is the type of the queue's exchange as Celery sees it: a
// queue declared without an exchange is on a direct one.
func (c *Config) exchangeType() string {
	if c.Exchange == "" {
		return "direct"
	}
	return c.ExchangeType
}

// Worker is a running echo worker. It does not reconnect: if the broker
// closes its connection, the worker stops and Err reports why.
type Worker struct {
	cfg  Config
	conn *amqp091.Connection
	wg   sync.WaitGroup
	rec  *recorder // nil unless cfg.Record

	stop     chan struct{}
	stopOnce sync.Once

	processed atomic.Int64 // final results published
	dropped   atomic.Int64 // messages acked without a result
	retried   atomic.Int64 // echo.retry republishes

	errMu sync.Mutex
	err   error
}

// Start connects, declares cfg.Queue (unless cfg.NoDeclare) and starts
// consuming on cfg.Channels channels. ctx bounds the connection and setup
// only; the worker runs until Stop.
func Start(ctx context.Context, cfg Config) (*Worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName(cfg.Name)
	amqpCfg := amqp091.Config{
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Properties: props,
	}
	if dl, ok := ctx.Deadline(); ok {
		amqpCfg.Dial = amqp091.DefaultDial(time.Until(dl))
	}
	conn, err := amqp091.DialConfig(cfg.URL, amqpCfg)
	if err != nil {
		return nil, fmt.Errorf("echoworker: dial: %w", err)
	}
	w := &Worker{cfg: cfg, conn: conn, stop: make(chan struct{})}
	if cfg.Record {
		w.rec = newRecorder(recordLimit)
	}
	if !cfg.NoDeclare {
		if err := w.declare(); err != nil {
			conn.Close()
			return nil, err
		}
	}

	lanes := make([]*lane, 0, cfg.Channels)
	for i := 0; i < cfg.Channels; i++ {
		l, err := w.openLane(i)
		if err != nil {
			conn.Close()
			return nil, err
		}
		lanes = append(lanes, l)
	}
	if err := ctx.Err(); err != nil {
		conn.Close()
		return nil, err
	}
	for _, l := range lanes {
		w.wg.Add(1)
		go l.run()
	}
	return w, nil
}

// declare declares the queue as Celery does: its exchange (when set), the
// queue, and the binding.
func (w *Worker) declare() error {
	cfg := &w.cfg
	setup, err := w.conn.Channel()
	if err != nil {
		return fmt.Errorf("echoworker: channel: %w", err)
	}
	defer setup.Close()
	if cfg.Exchange != "" {
		if err := setup.ExchangeDeclare(cfg.Exchange, cfg.ExchangeType, true, false, false, false, nil); err != nil {
			return fmt.Errorf("echoworker: declare exchange %q: %w", cfg.Exchange, err)
		}
	}
	var args amqp091.Table
	if cfg.QueueType == "quorum" {
		args = amqp091.Table{"x-queue-type": "quorum"}
	}
	if _, err := setup.QueueDeclare(cfg.Queue, true, false, false, false, args); err != nil {
		return fmt.Errorf("echoworker: declare %q: %w", cfg.Queue, err)
	}
	if cfg.Exchange != "" {
		if err := setup.QueueBind(cfg.Queue, cfg.RoutingKey, cfg.Exchange, false, nil); err != nil {
			return fmt.Errorf("echoworker: bind %q to %q: %w", cfg.Queue, cfg.Exchange, err)
		}
	}
	return nil
}

// Stop stops consuming and closes the connection. Unacked messages,
// including held ETA tasks, go back to the queue. Stop is idempotent and
// returns once every goroutine the worker started has returned.
func (w *Worker) Stop() {
	w.stopOnce.Do(func() {
		close(w.stop)
		w.wg.Wait()
		_ = w.conn.Close()
	})
}

// Processed returns how many final (SUCCESS) results the worker has
// published.
func (w *Worker) Processed() int64 { return w.processed.Load() }

// Dropped returns how many messages were acked without a result: empty
// reply_to, no task header, an undecodable body, an invalid eta, or an
// echo.retry that Celery would reject.
func (w *Worker) Dropped() int64 { return w.dropped.Load() }

// Retried returns how many times echo.retry tasks were republished.
func (w *Worker) Retried() int64 { return w.retried.Load() }

// Err returns the error that stopped a channel, if any.
func (w *Worker) Err() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

func (w *Worker) setErr(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.errMu.Unlock()
}

// Received returns the receipt of the last message received for task id,
// and false if there is none (or Config.Record is off).
func (w *Worker) Received(taskID string) (Receipt, bool) {
	if w.rec == nil {
		return Receipt{}, false
	}
	return w.rec.last(taskID)
}

// Receipts returns the receipts of every message received for task id, in
// order (a retried task is received several times; the last 64 are kept).
func (w *Worker) Receipts(taskID string) []Receipt {
	if w.rec == nil {
		return nil
	}
	return w.rec.all(taskID)
}

// lane is one channel and the goroutine that owns it.
type lane struct {
	w          *Worker
	ch         *amqp091.Channel
	deliveries <-chan amqp091.Delivery
	closed     chan *amqp091.Error
	buf        []byte
	returns    <-chan amqp091.Return // with ConfirmResults

	// ETA tasks held until due (HoldETA), and the timer for the first.
	held   heldHeap
	timer  *time.Timer
	timerC <-chan time.Time
}

func (w *Worker) openLane(i int) (*lane, error) {
	ch, err := w.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("echoworker: channel %d: %w", i, err)
	}
	if err := ch.Qos(w.cfg.Prefetch, 0, false); err != nil {
		return nil, fmt.Errorf("echoworker: qos: %w", err)
	}
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	var returns <-chan amqp091.Return
	if w.cfg.ConfirmResults {
		if err := ch.Confirm(false); err != nil {
			return nil, fmt.Errorf("echoworker: confirm mode: %w", err)
		}
		// A return comes before the confirm of the same message, on the
		// channel's one reader: buffer them so that it never blocks.
		returns = ch.NotifyReturn(make(chan amqp091.Return, 64))
	}
	d, err := ch.Consume(w.cfg.Queue, "echoworker-"+strconv.Itoa(i), false, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("echoworker: consume %q: %w", w.cfg.Queue, err)
	}
	return &lane{w: w, ch: ch, deliveries: d, closed: closed, returns: returns, buf: make([]byte, 0, 256)}, nil
}

// run consumes. Acks are batched with multiple=true, except while ETA tasks
// are held unacked: then every other message is acked on its own, so that
// no multiple ack covers a held one.
func (l *lane) run() {
	defer l.w.wg.Done()
	var (
		lastTag uint64 // highest delivery tag not yet acked; 0 when none
		unacked int
		batch   = l.w.cfg.Prefetch / 2
	)
	if batch < 1 {
		batch = 1
	}
	defer func() {
		if l.timer != nil {
			l.timer.Stop()
		}
	}()
	flush := func() bool {
		if lastTag == 0 {
			return true
		}
		if err := l.ch.Ack(lastTag, true); err != nil {
			l.w.setErr(fmt.Errorf("echoworker: ack: %w", err))
			return false
		}
		lastTag, unacked = 0, 0
		return true
	}
	ackOne := func(tag uint64) bool {
		if err := l.ch.Ack(tag, false); err != nil {
			l.w.setErr(fmt.Errorf("echoworker: ack: %w", err))
			return false
		}
		return true
	}
	for {
		select {
		case <-l.w.stop:
			flush()
			_ = l.ch.Close()
			return
		case err, ok := <-l.closed:
			if ok && err != nil {
				l.w.setErr(fmt.Errorf("echoworker: channel closed: %w", err))
			}
			return
		case d, ok := <-l.deliveries:
			if !ok {
				l.w.setErr(errors.New("echoworker: consumer cancelled"))
				return
			}
			held, err := l.handle(&d)
			if err != nil {
				l.w.setErr(err)
				return
			}
			if held {
				// Every pending tag is below the held one: ack them now,
				// before any later multiple ack could cover it.
				if !flush() {
					return
				}
				l.arm()
				continue
			}
			if len(l.held) > 0 {
				if !ackOne(d.DeliveryTag) {
					return
				}
				continue
			}
			lastTag = d.DeliveryTag
			unacked++
			if unacked >= batch || len(l.deliveries) == 0 {
				if !flush() {
					return
				}
			}
		case <-l.timerC:
			now := time.Now()
			for len(l.held) > 0 && !l.held[0].eta.After(now) {
				h := heap.Pop(&l.held).(heldTask)
				id, _ := h.d.Headers["id"].(string)
				task, _ := h.d.Headers["task"].(string)
				if err := l.process(&h.d, id, task); err != nil {
					l.w.setErr(err)
					return
				}
				if !ackOne(h.d.DeliveryTag) {
					return
				}
			}
			l.arm()
		}
	}
}

// arm sets the timer for the first held task.
func (l *lane) arm() {
	if len(l.held) == 0 {
		if l.timer != nil {
			l.timer.Stop()
		}
		l.timerC = nil
		return
	}
	d := time.Until(l.held[0].eta)
	if l.timer == nil {
		l.timer = time.NewTimer(d)
	} else {
		l.timer.Reset(d)
	}
	l.timerC = l.timer.C
}

// handle deals with one delivery: it drops it, holds it (and reports true:
// the caller must not ack it), or processes it.
func (l *lane) handle(d *amqp091.Delivery) (bool, error) {
	id, _ := d.Headers["id"].(string)
	task, isV2 := d.Headers["task"].(string)
	if !isV2 || id == "" {
		l.w.dropped.Add(1)
		return false, nil
	}
	if l.w.rec != nil {
		l.w.rec.add(id, newReceipt(d))
	}
	if l.w.cfg.HoldETA {
		if s, ok := d.Headers["eta"].(string); ok && s != "" {
			eta, err := parseETA(s)
			if err != nil {
				// Celery: InvalidTaskError, the message is rejected with no result.
				l.w.dropped.Add(1)
				return false, nil
			}
			if time.Until(eta) > 0 {
				heap.Push(&l.held, heldTask{eta: eta, d: *d})
				return true, nil
			}
		}
	}
	return false, l.process(d, id, task)
}

// process runs task id now: echo.retry retries or answers, anything else
// is echoed.
func (l *lane) process(d *amqp091.Delivery, id, task string) error {
	if task == RetryTask {
		return l.retry(d, id)
	}
	result, ok := echoResult(d.Body)
	if !ok || d.ReplyTo == "" {
		l.w.dropped.Add(1)
		return nil
	}
	l.buf = AppendResultBody(l.buf[:0], id, result)
	if err := l.publishState(d, id); err != nil {
		return err
	}
	l.w.processed.Add(1)
	return nil
}

// publishState publishes l.buf, a result body, to d's reply_to as
// Celery's rpc backend does.
func (l *lane) publishState(d *amqp091.Delivery, id string) error {
	corr := d.CorrelationId
	if corr == "" {
		corr = id
	}
	msg := amqp091.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp091.Transient,
		Priority:        0,
		CorrelationId:   corr,
		Headers:         amqp091.Table{},
		Body:            l.buf,
	}
	if !l.w.cfg.ConfirmResults {
		if err := l.ch.Publish("", d.ReplyTo, false, false, msg); err != nil {
			return fmt.Errorf("echoworker: publish result: %w", err)
		}
		return nil
	}
	dc, err := l.ch.PublishWithDeferredConfirm("", d.ReplyTo, true, false, msg)
	if err != nil {
		return fmt.Errorf("echoworker: publish result: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	acked, err := dc.WaitContext(ctx)
	cancel()
	outcome := l.drainReturns(corr)
	switch {
	case err != nil:
		outcome += "no confirm: " + err.Error()
	case acked:
		outcome += "acked"
	default:
		outcome += "nacked"
	}
	if l.w.cfg.OnResult != nil {
		l.w.cfg.OnResult(id, outcome)
	}
	return nil
}

// drainReturns reads the returns that came before a confirm and says, as
// a prefix of the outcome, whether the message with correlation id corr
// was one of them. A return is delivered before its message's confirm.
func (l *lane) drainReturns(corr string) string {
	prefix := ""
	for {
		select {
		case r, ok := <-l.returns:
			if !ok {
				return prefix
			}
			if r.CorrelationId == corr {
				prefix = fmt.Sprintf("returned %d %s, ", r.ReplyCode, r.ReplyText)
			}
		default:
			return prefix
		}
	}
}

// retry runs echo.retry: [times, countdown]. While the retries header is
// below times it republishes the task as Celery 5.6.3's Task.retry does
// (see retryRoute), after a RETRY state; then it answers SUCCESS with the
// number of retries.
func (l *lane) retry(d *amqp091.Delivery, id string) error {
	times, countdown, countdownText, ok := retryArgs(d.Body)
	if !ok {
		l.w.dropped.Add(1)
		return nil
	}
	retries := headerInt(d.Headers["retries"])
	if retries >= times {
		if d.ReplyTo == "" {
			l.w.dropped.Add(1)
			return nil
		}
		l.buf = AppendResultBody(l.buf[:0], id, json.RawMessage(strconv.FormatInt(retries, 10)))
		if err := l.publishState(d, id); err != nil {
			return err
		}
		l.w.processed.Add(1)
		return nil
	}
	r := l.w.retryRoute(d.Exchange, d.RoutingKey, countdown)
	if r.reject {
		// Celery: ValueError("countdown must be a positive number") in
		// send_task becomes Reject(requeue=False): no state, no result.
		l.w.dropped.Add(1)
		return nil
	}
	if d.ReplyTo != "" {
		l.buf = AppendRetryBody(l.buf[:0], id, "Retry in "+countdownText+"s")
		if err := l.publishState(d, id); err != nil {
			return err
		}
	}
	now := time.Now()
	pub := amqp091.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp091.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		Headers:         retryHeaders(d.Headers, id, retries+1, countdown, now),
		Body:            d.Body,
	}
	if s, ok := d.Headers["expires"].(string); ok && s != "" {
		if exp, err := parseETA(s); err == nil {
			ms := exp.Sub(now).Milliseconds()
			if ms < 0 {
				ms = 0
			}
			pub.Expiration = strconv.FormatInt(ms, 10)
		}
	}
	if err := l.ch.Publish(r.exchange, r.key, false, false, pub); err != nil {
		return fmt.Errorf("echoworker: republish retry: %w", err)
	}
	l.w.retried.Add(1)
	return nil
}

// route is where a retry goes.
type route struct {
	exchange, key string
	delayed       bool // through native delayed delivery
	reject        bool // Celery rejects the task instead
}

// retryRoute decides where Celery 5.6.3 republishes a retry with this
// countdown of a task delivered through exchange with routing key key
// (celery/app/task.py signature_from_request, celery/app/base.py
// send_task, celery/app/amqp.py send_task_message):
//
//   - The router picks a queue: for a task delivered through "", the queue
//     named by the routing key (this worker's queue); otherwise the app's
//     default route, task_default_queue (Config.DefaultQueue; a queue on a
//     direct exchange unless it is this worker's queue).
//   - If that queue's exchange is not direct and countdown > 0, the retry
//     goes through native delayed delivery: exchange celery_delayed_27, key
//     = the 28 binary digits of int(countdown) + "." + the picked queue's
//     routing key. A countdown under 1 s truncates to 0 and kombu's
//     calculate_routing_key raises ValueError, which Task.retry turns into
//     Reject(requeue=False).
//   - Otherwise it is published directly: for a task delivered through "",
//     to "" with the queue name (direct exchange) or to the queue's exchange
//     and routing key; otherwise to the exchange and routing key it was
//     delivered with.
func (w *Worker) retryRoute(exchange, key string, countdown float64) route {
	own := (exchange == "" && key != "") || w.cfg.DefaultQueue == w.cfg.Queue
	qtype := "direct"
	if own {
		qtype = w.cfg.exchangeType()
	}
	if qtype != "direct" && countdown > 0 {
		n := int64(countdown)
		if n < 1 {
			return route{reject: true}
		}
		return route{exchange: "celery_delayed_27", key: delayedRoutingKey(n, w.cfg.RoutingKey), delayed: true}
	}
	if exchange == "" {
		if qtype == "direct" {
			return route{exchange: "", key: w.cfg.Queue}
		}
		return route{exchange: w.cfg.Exchange, key: w.cfg.RoutingKey}
	}
	if key == "" && qtype == "direct" {
		q := w.cfg.DefaultQueue
		if own {
			q = w.cfg.Queue
		}
		return route{exchange: "", key: q}
	}
	return route{exchange: exchange, key: key}
}

// delayedRoutingKey is kombu's calculate_routing_key: the 28 binary digits
// of seconds joined by dots, a dot and routingKey.
func delayedRoutingKey(seconds int64, routingKey string) string {
	bits := fmt.Sprintf("%028b", seconds)
	b := make([]byte, 0, 2*len(bits)+len(routingKey))
	for i := 0; i < len(bits); i++ {
		b = append(b, bits[i], '.')
	}
	return string(append(b, routingKey...))
}

// retryHeaders are the headers of a retry: the task's own, without the
// x-death family (Celery filters them so that RabbitMQ does not see a
// dead-letter cycle) and the broker's x-delivery-count, with retries, eta
// (now+countdown, or null for a zero countdown) and parent_id (the task's
// own id when it had none).
func retryHeaders(h amqp091.Table, id string, retries int64, countdown float64, now time.Time) amqp091.Table {
	out := make(amqp091.Table, len(h)+2)
	for k, v := range h {
		if strings.HasPrefix(k, "x-death") || strings.HasPrefix(k, "x-first-death-") ||
			strings.HasPrefix(k, "x-last-death-") || k == "x-delivery-count" {
			continue
		}
		out[k] = v
	}
	out["retries"] = int32(retries)
	if countdown != 0 {
		out["eta"] = FormatETA(now.Add(time.Duration(countdown * float64(time.Second))))
	} else {
		out["eta"] = nil
	}
	if p, _ := out["parent_id"].(string); p == "" {
		out["parent_id"] = id
	}
	return out
}

// retryArgs decodes echo.retry's body: args [times, countdown].
func retryArgs(body []byte) (times int64, countdown float64, text string, ok bool) {
	var parts []json.RawMessage
	if err := json.Unmarshal(body, &parts); err != nil || len(parts) != 3 {
		return 0, 0, "", false
	}
	var args []json.Number
	dec := json.NewDecoder(bytes.NewReader(parts[0]))
	dec.UseNumber()
	if err := dec.Decode(&args); err != nil || len(args) != 2 {
		return 0, 0, "", false
	}
	t, err := args[0].Float64()
	if err != nil {
		return 0, 0, "", false
	}
	c, err := args[1].Float64()
	if err != nil {
		return 0, 0, "", false
	}
	return int64(t), c, args[1].String(), true
}

// headerInt reads an integer header of any AMQP integer type.
func headerInt(v any) int64 {
	switch v := v.(type) {
	case int:
		return int64(v)
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case int64:
		return v
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	case uint64:
		return int64(v)
	case float32:
		return int64(v)
	case float64:
		return int64(v)
	}
	return 0
}

// parseETA parses an ISO-8601 time as Celery's dateutil isoparse does for
// the forms Celery and stalk send; a naive time is UTC.
func parseETA(s string) (time.Time, error) {
	if len(s) > 10 && s[10] == ' ' {
		s = s[:10] + "T" + s[11:]
	}
	var firstErr error
	for _, layout := range []string{
		"2006-01-02T15:04:05Z07:00",
		"2006-01-02T15:04:05",
		"2006-01-02T15:04:05Z0700",
		"2006-01-02T15:04:05Z07",
		"2006-01-02T15:04Z07:00",
		"2006-01-02T15:04",
		"2006-01-02",
	} {
		t, err := time.Parse(layout, s)
		if err == nil {
			return t, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return time.Time{}, firstErr
}

// FormatETA writes t as Python's datetime.isoformat() writes an aware UTC
// time: 2026-12-02T02:43:42.699366+00:00, without the fraction when the
// microseconds are zero.
func FormatETA(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05") + "+00:00"
	}
	return t.Format("2006-01-02T15:04:05.000000") + "+00:00"
}

// heldTask is an ETA task waiting, unacked, for its ETA.
type heldTask struct {
	eta time.Time
	d   amqp091.Delivery
}

type heldHeap []heldTask

func (h heldHeap) Len() int           { return len(h) }
func (h heldHeap) Less(i, j int) bool { return h[i].eta.Before(h[j].eta) }
func (h heldHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *heldHeap) Push(x any)        { *h = append(*h, x.(heldTask)) }
func (h *heldHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = heldTask{}
	*h = old[:len(old)-1]
	return x
}

// echoResult decodes a protocol v2 body [args, kwargs, embed] and returns
// the raw JSON of the result: args[0] when there is exactly one positional
// argument, the args list otherwise.
func echoResult(body []byte) (json.RawMessage, bool) {
	var parts []json.RawMessage
	if err := json.Unmarshal(body, &parts); err != nil || len(parts) != 3 {
		return nil, false
	}
	var args []json.RawMessage
	if err := json.Unmarshal(parts[0], &args); err != nil {
		return nil, false
	}
	if len(args) == 1 {
		return args[0], true
	}
	return parts[0], true
}

// AppendResultBody appends a SUCCESS result body, byte for byte as Celery's
// rpc backend writes it (json.dumps with its default separators), to dst.
// result must be valid JSON.
func AppendResultBody(dst []byte, taskID string, result json.RawMessage) []byte {
	return appendStateBody(dst, taskID, "SUCCESS", result)
}

// AppendRetryBody appends the RETRY state body the worker sends before
// each republish of echo.retry:
//
//	{"task_id": "<id>", "status": "RETRY", "result": {"exc_type": "Retry", "exc_message": ["<message>"], "exc_module": "celery.exceptions"}, "traceback": null, "children": []}
func AppendRetryBody(dst []byte, taskID, message string) []byte {
	exc := make([]byte, 0, 96+len(message))
	exc = append(exc, `{"exc_type": "Retry", "exc_message": [`...)
	exc = appendJSONString(exc, message)
	exc = append(exc, `], "exc_module": "celery.exceptions"}`...)
	return appendStateBody(dst, taskID, "RETRY", exc)
}

func appendStateBody(dst []byte, taskID, status string, result json.RawMessage) []byte {
	dst = append(dst, `{"task_id": `...)
	dst = appendJSONString(dst, taskID)
	dst = append(dst, `, "status": "`...)
	dst = append(dst, status...)
	dst = append(dst, `", "result": `...)
	dst = append(dst, bytes.TrimSpace(result)...)
	dst = append(dst, `, "traceback": null, "children": []}`...)
	return dst
}

func appendJSONString(dst []byte, s string) []byte {
	plain := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			plain = false
			break
		}
	}
	if plain {
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"')
	}
	b, _ := json.Marshal(s)
	return append(dst, b...)
}
