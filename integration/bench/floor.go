package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// floorClient is the plainest correct RPC client amqp091-go allows: one
// connection, one publishing channel (optionally in confirm mode), one
// durable reply queue with x-expires consumed with auto-ack on its own
// channel, and a map from correlation id to a waiting caller. It does not
// decode result bodies: it is the floor, what any client has to pay.
type floorClient struct {
	conn    *amqp091.Connection
	pub     *amqp091.Channel
	sub     *amqp091.Channel
	queue   string // task queue
	replyQ  string
	confirm bool

	mu      sync.Mutex
	waiting map[string]chan struct{}
	done    chan struct{}
}

func newFloorClient(ctx context.Context, url, name, taskQueue, replyQ string, confirm bool) (*floorClient, error) {
	conn, err := dial(url, name)
	if err != nil {
		return nil, err
	}
	f := &floorClient{conn: conn, queue: taskQueue, replyQ: replyQ, confirm: confirm,
		waiting: make(map[string]chan struct{}), done: make(chan struct{})}
	fail := func(err error) (*floorClient, error) { conn.Close(); return nil, err }
	if f.pub, err = conn.Channel(); err != nil {
		return fail(err)
	}
	if confirm {
		if err := f.pub.Confirm(false); err != nil {
			return fail(err)
		}
	}
	if f.sub, err = conn.Channel(); err != nil {
		return fail(err)
	}
	if _, err := f.sub.QueueDeclare(replyQ, true, false, false, false, amqp091.Table{"x-expires": int32(60000)}); err != nil {
		return fail(err)
	}
	d, err := f.sub.Consume(replyQ, "", true, false, false, false, nil)
	if err != nil {
		return fail(err)
	}
	go f.consume(d)
	if err := ctx.Err(); err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

func (f *floorClient) consume(d <-chan amqp091.Delivery) {
	defer close(f.done)
	for m := range d {
		f.mu.Lock()
		w := f.waiting[m.CorrelationId]
		delete(f.waiting, m.CorrelationId)
		f.mu.Unlock()
		if w != nil {
			close(w)
		}
	}
}

// call sends task i and waits for the broker's confirm (in confirm mode)
// and then for its result.
func (f *floorClient) call(ctx context.Context, i int) error {
	id := uuid.NewString()
	w := make(chan struct{})
	f.mu.Lock()
	f.waiting[id] = w
	f.mu.Unlock()
	dc, err := f.pub.PublishWithDeferredConfirm("", f.queue, false, false, taskMessage(id, f.replyQ, i))
	if err != nil {
		return err
	}
	if dc != nil {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("floor: publish nacked")
		}
	}
	select {
	case <-w:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-f.done:
		return errors.New("floor: reply consumer stopped")
	}
}

func (f *floorClient) close() {
	if ch, err := f.conn.Channel(); err == nil {
		_, _ = ch.QueueDelete(f.replyQ, false, false, false)
	}
	f.conn.Close()
}

// window runs n calls with at most w outstanding and returns calls/s.
func window(ctx context.Context, n, w int, call func(ctx context.Context, i int) error) (float64, error) {
	if w > n {
		w = n
	}
	var next atomic.Int64
	errc := make(chan error, w)
	start := time.Now()
	var wg sync.WaitGroup
	for g := 0; g < w; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > n {
					return
				}
				if err := call(ctx, i); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	select {
	case err := <-errc:
		return 0, err
	default:
	}
	return float64(n) / el.Seconds(), nil
}

// sequential runs n calls one after another and returns their durations.
func sequential(ctx context.Context, n int, call func(ctx context.Context, i int) error) (latencies, error) {
	l := make(latencies, 0, n)
	for i := 0; i < n; i++ {
		t := time.Now()
		if err := call(ctx, i); err != nil {
			return nil, err
		}
		l = append(l, time.Since(t))
	}
	return l, nil
}

// measure runs a warm-up, the windowed run and the sequential run of call.
func measure(ctx context.Context, cfg *config, call func(ctx context.Context, i int) error) (modeResult, error) {
	var r modeResult
	if _, err := window(ctx, cfg.warmup(), cfg.window, call); err != nil {
		return r, fmt.Errorf("warm-up: %w", err)
	}
	cpu0 := processCPU()
	perS, err := window(ctx, cfg.n, cfg.window, call)
	if err != nil {
		return r, err
	}
	r.CPUus = float64((processCPU() - cpu0).Microseconds()) / float64(cfg.n)
	lat, err := sequential(ctx, cfg.seq, call)
	if err != nil {
		return r, fmt.Errorf("sequential: %w", err)
	}
	r.PerS = perS
	r.P50 = ms(lat.pct(0.50))
	r.P99 = ms(lat.pct(0.99))
	r.OK = true
	return r, nil
}

func runFloor(ctx context.Context, cfg *config, confirm bool) (modeResult, error) {
	name := "floor"
	if !confirm {
		name = "floor-noconfirm"
	}
	f, err := newFloorClient(ctx, cfg.url, cfg.prefix+" "+name, cfg.taskQueue, cfg.prefix+"-"+name+"-reply", confirm)
	if err != nil {
		return modeResult{}, err
	}
	defer f.close()
	return measure(ctx, cfg, f.call)
}

// processCPU is the user+system CPU time this process has used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func dial(url, name string) (*amqp091.Connection, error) {
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName(name)
	conn, err := amqp091.DialConfig(url, amqp091.Config{
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Properties: props,
		Dial:       amqp091.DefaultDial(10 * time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", name, err)
	}
	return conn, nil
}
