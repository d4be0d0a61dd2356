package harness

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/amqp"
)

// Modes are the reply modes every result test runs in.
var Modes = []amqp.ReplyMode{amqp.PerTask, amqp.Shared}

// Dial connects a client for test t: default queue queue, reply queues
// named after the run that expire a minute after their last use,
// connections named after the suite and the test, warnings logged to t,
// and Close at the end of t. opts come last and win.
func Dial(t testing.TB, suite, queue string, opts ...amqp.Option) *amqp.Client {
	t.Helper()
	return DialURL(t, BrokerURL(), Name(suite)+"-"+t.Name(), 20*time.Second,
		append([]amqp.Option{amqp.WithDefaultQueue(queue)}, opts...)...)
}

// DialURL connects a client for test t to brokerURL, failing t if that
// takes longer than timeout. The client's connections are named after
// connName; its reply queues are named after the run and expire a minute
// after their last use; warnings are logged to t; it is closed at the end
// of t. opts come last and win.
func DialURL(t testing.TB, brokerURL, connName string, timeout time.Duration, opts ...amqp.Option) *amqp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	base := []amqp.Option{
		amqp.WithResultExpires(time.Minute),
		amqp.WithReplyQueuePrefix(Name("reply") + "."),
		amqp.WithConnectionName(connName),
		amqp.WithLogger(zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)),
	}
	c, err := amqp.Dial(ctx, brokerURL, append(base, opts...)...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ForModes runs fn as a subtest once per reply mode, each with a client
// from dial.
func ForModes(t *testing.T, dial func(t testing.TB, opts ...amqp.Option) *amqp.Client, fn func(t *testing.T, c *amqp.Client)) {
	for _, m := range Modes {
		t.Run(m.String(), func(t *testing.T) {
			fn(t, dial(t, amqp.WithReplyMode(m)))
		})
	}
}
