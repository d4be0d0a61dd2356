package echoworker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Config configures a Worker. Only URL and Queue are required.
type Config struct {
	URL      string // AMQP URL of the broker
	Queue    string // queue to consume; declared durable, like Celery's queues
	Channels int    // channels, each with its own consumer; default 4
	Prefetch int    // basic.qos prefetch count per channel; default 256
	Name     string // connection_name shown by rabbitmqctl; default "echoworker <Queue>"
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
	if c.Channels == 0 {
		c.Channels = 4
	}
	if c.Prefetch == 0 {
		c.Prefetch = 256
	}
	if c.Name == "" {
		c.Name = "echoworker " + c.Queue
	}
	return nil
}

// Worker is a running echo worker. It does not reconnect: if the broker
// closes its connection, the worker stops and Err reports why.
type Worker struct {
	cfg  Config
	conn *amqp091.Connection
	wg   sync.WaitGroup

	stop     chan struct{}
	stopOnce sync.Once

	processed atomic.Int64 // results published
	dropped   atomic.Int64 // messages acked without a result

	errMu sync.Mutex
	err   error
}

// Start connects, declares cfg.Queue and starts consuming on cfg.Channels
// channels. ctx bounds the connection and setup only; the worker runs until
// Stop.
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
	setup, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("echoworker: channel: %w", err)
	}
	if _, err := setup.QueueDeclare(cfg.Queue, true, false, false, false, nil); err != nil {
		conn.Close()
		return nil, fmt.Errorf("echoworker: declare %q: %w", cfg.Queue, err)
	}
	_ = setup.Close()

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

// Stop stops consuming and closes the connection. Unacked messages go back
// to the queue. Stop is idempotent and returns once every goroutine the
// worker started has returned.
func (w *Worker) Stop() {
	w.stopOnce.Do(func() {
		close(w.stop)
		w.wg.Wait()
		_ = w.conn.Close()
	})
}

// Processed returns how many results the worker has published.
func (w *Worker) Processed() int64 { return w.processed.Load() }

// Dropped returns how many messages were acked without a result: empty
// reply_to, no task header, or an undecodable body.
func (w *Worker) Dropped() int64 { return w.dropped.Load() }

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

// lane is one channel and the goroutine that owns it.
type lane struct {
	w          *Worker
	ch         *amqp091.Channel
	deliveries <-chan amqp091.Delivery
	closed     chan *amqp091.Error
	buf        []byte
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
	d, err := ch.Consume(w.cfg.Queue, "echoworker-"+strconv.Itoa(i), false, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("echoworker: consume %q: %w", w.cfg.Queue, err)
	}
	return &lane{w: w, ch: ch, deliveries: d, closed: closed, buf: make([]byte, 0, 256)}, nil
}

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
			if err := l.handle(&d); err != nil {
				l.w.setErr(err)
				return
			}
			lastTag = d.DeliveryTag
			unacked++
			if unacked >= batch || len(l.deliveries) == 0 {
				if !flush() {
					return
				}
			}
		}
	}
}

// handle publishes the result for one task message, if it gets one.
func (l *lane) handle(d *amqp091.Delivery) error {
	id, _ := d.Headers["id"].(string)
	if _, isV2 := d.Headers["task"].(string); !isV2 || id == "" {
		l.w.dropped.Add(1)
		return nil
	}
	result, ok := echoResult(d.Body)
	if !ok || d.ReplyTo == "" {
		l.w.dropped.Add(1)
		return nil
	}
	corr := d.CorrelationId
	if corr == "" {
		corr = id
	}
	l.buf = AppendResultBody(l.buf[:0], id, result)
	err := l.ch.Publish("", d.ReplyTo, false, false, amqp091.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp091.Transient,
		Priority:        0,
		CorrelationId:   corr,
		Headers:         amqp091.Table{},
		Body:            l.buf,
	})
	if err != nil {
		return fmt.Errorf("echoworker: publish result: %w", err)
	}
	l.w.processed.Add(1)
	return nil
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
	dst = append(dst, `{"task_id": `...)
	dst = appendJSONString(dst, taskID)
	dst = append(dst, `, "status": "SUCCESS", "result": `...)
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
