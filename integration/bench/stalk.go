package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stalk-dev/stalk/amqp"
)

// stalkClient dials the stalk client for a bench mode. Connection names
// start with cfg.prefix + " " + tag, so that rabbitmqctl can count its
// channels; per-task reply queues are named cfg.prefix-reply-<id>. extra
// options come last.
func stalkClient(ctx context.Context, cfg *config, mode, tag string, extra ...amqp.Option) (*amqp.Client, error) {
	opts := []amqp.Option{
		amqp.WithLogger(zerolog.Nop()),
		amqp.WithConnectionName(cfg.prefix + " " + tag),
		amqp.WithReplyQueuePrefix(cfg.prefix + "-reply-"),
		amqp.WithDefaultQueue(cfg.taskQueue),
		// Per-task queues that nobody deletes vanish after this; the bench
		// deletes them itself, this is the backstop.
		amqp.WithResultExpires(cfg.ceilingExpires),
	}
	switch mode {
	case "shared":
		opts = append(opts, amqp.WithReplyMode(amqp.Shared))
	case "pertask":
		opts = append(opts, amqp.WithReplyMode(amqp.PerTask), amqp.WithLanes(cfg.lanes))
	default:
		return nil, fmt.Errorf("unknown stalk mode %q", mode)
	}
	opts = append(opts, extra...)
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return amqp.Dial(dctx, cfg.url, opts...)
}

// stalkCaller returns a call function (Send, then Get) and records the
// reply queues of per-task sends so that they can be deleted afterwards.
type stalkCaller struct {
	c     *amqp.Client
	queue string
	mu    sync.Mutex
	ids   []string // per-task mode: ids whose reply queue to delete
	track bool
}

func (s *stalkCaller) call(ctx context.Context, i int) error {
	r, err := s.c.Send(ctx, "tasks.echo", amqp.Args(i), amqp.Queue(s.queue))
	if err != nil {
		return err
	}
	if s.track {
		s.mu.Lock()
		s.ids = append(s.ids, r.ID())
		s.mu.Unlock()
	}
	v, err := r.Get(ctx)
	if err != nil {
		return err
	}
	if !sameNumber(v, i) {
		return fmt.Errorf("task %s: got %v (%T), want %d", r.ID(), v, v, i)
	}
	return nil
}

// sameNumber checks the echoed value without assuming how the result
// decoder represents JSON numbers.
func sameNumber(v any, i int) bool {
	return fmt.Sprint(v) == fmt.Sprint(i)
}

// runStalk measures stalk in shared or per-task mode with n tasks. It also
// returns the channels the client holds at the end, counted by
// rabbitmqctl (or, when that fails, by the client's own counter).
func runStalk(ctx context.Context, cfg *config, mode string, n int) (modeResult, *int, error) {
	c, err := stalkClient(ctx, cfg, mode, mode)
	if err != nil {
		return modeResult{}, nil, err
	}
	s := &stalkCaller{c: c, queue: cfg.taskQueue, track: mode == "pertask"}
	defer func() {
		c.Close()
		if s.track {
			deleteReplyQueues(cfg, c, s.ids)
		} else {
			deleteQueue(cfg, c.ReplyQueue(""))
		}
	}()
	sub := *cfg
	sub.n = n
	r, err := measure(ctx, &sub, s.call)
	if err != nil {
		return r, nil, err
	}
	ch := c.Stats().Channels
	if b, conns, err := brokerChannels(ctx, cfg.prefix+" "+mode); err == nil && conns > 0 {
		ch = b
	} else {
		channelsFromClient.Store(true)
	}
	return r, &ch, nil
}

// channelsFromClient is set when a channel count had to come from the
// client's own counter because rabbitmqctl could not count it; the report
// says so, since the client's counter is what it believes, not what the
// broker sees.
var channelsFromClient atomic.Bool

// deleteReplyQueues deletes per-task reply queues by name, pipelined with
// no-wait on a few channels.
func deleteReplyQueues(cfg *config, c *amqp.Client, ids []string) {
	if len(ids) == 0 {
		return
	}
	conn, err := dial(cfg.url, cfg.prefix+" cleanup")
	if err != nil {
		return
	}
	defer conn.Close()
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = c.ReplyQueue(id)
	}
	var chans []*amqp091.Channel
	for i := 0; i < 4; i++ {
		ch, err := conn.Channel()
		if err != nil {
			break
		}
		chans = append(chans, ch)
	}
	if len(chans) > 0 {
		deleteQueues(chans, names)
	}
}

// pertaskChannels opens a per-task client and counts its channels with
// rabbitmqctl (or its own counter) with one result pending and with up to
// 1,000 pending on a queue nobody consumes.
func pertaskChannels(ctx context.Context, cfg *config) (idle, pending, n int, err error) {
	c, err := stalkClient(ctx, cfg, "pertask", "pertask-pending")
	if err != nil {
		return 0, 0, 0, err
	}
	q := cfg.prefix + "-pertask-pending"
	var ids []string
	defer func() {
		c.Close()
		deleteReplyQueues(cfg, c, ids)
		deleteQueue(cfg, q)
	}()
	count := func() int {
		if ch, conns, err := brokerChannels(ctx, cfg.prefix+" pertask-pending"); err == nil && conns > 0 {
			return ch
		}
		channelsFromClient.Store(true)
		return c.Stats().Channels
	}
	n = cfg.window * 8
	if n > 1000 {
		n = 1000
	}
	for i := 0; i < n; i++ {
		r, err := c.Send(ctx, "tasks.echo", amqp.Args(i), amqp.Queue(q))
		if err != nil {
			return 0, 0, 0, err
		}
		ids = append(ids, r.ID())
		if i == 0 {
			idle = count()
		}
	}
	pending = count()
	if p := c.Stats().Pending; p != n {
		return 0, 0, 0, fmt.Errorf("per-task client reports %d pending results, want %d", p, n)
	}
	return idle, pending, n, nil
}
