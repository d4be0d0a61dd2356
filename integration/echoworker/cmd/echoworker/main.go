// Command echoworker runs the echo worker until interrupted.
//
//	go run ./integration/echoworker/cmd/echoworker -queue celery -channels 4 -prefetch 256
//
// As a stand-in for a Celery 5.6 worker on a quorum queue on a topic
// exchange, holding ETA tasks:
//
//	go run ./integration/echoworker/cmd/echoworker -queue q -queue-type quorum -exchange q -exchange-type topic -hold-eta
//
// The broker URL comes from -url, or $STALK_BROKER_URL, or the local
// RabbitMQ with guest/guest.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/stalk-dev/stalk/integration/echoworker"
)

func main() {
	def := os.Getenv("STALK_BROKER_URL")
	if def == "" {
		def = "amqp://guest:guest@127.0.0.1:5672/"
	}
	url := flag.String("url", def, "AMQP broker URL")
	queue := flag.String("queue", "celery", "queue to consume")
	channels := flag.Int("channels", 4, "channels (consumers)")
	prefetch := flag.Int("prefetch", 256, "prefetch count per channel")
	queueType := flag.String("queue-type", "", `queue type: "" or "classic", or "quorum"`)
	exchange := flag.String("exchange", "", "exchange to declare and bind the queue to (default: none)")
	exchangeType := flag.String("exchange-type", "", `type of -exchange (default "direct")`)
	routingKey := flag.String("routing-key", "", "binding key for -exchange (default: the queue name)")
	holdETA := flag.Bool("hold-eta", false, "hold tasks with a future eta, unacked, until their ETA")
	noDeclare := flag.Bool("no-declare", false, "declare nothing: the queue exists already")
	defaultQueue := flag.String("default-queue", "", `task_default_queue of the app stood in for, which routes echo.retry retries (default "celery")`)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	w, err := echoworker.Start(startCtx, echoworker.Config{
		URL: *url, Queue: *queue, Channels: *channels, Prefetch: *prefetch,
		QueueType: *queueType, Exchange: *exchange, ExchangeType: *exchangeType, RoutingKey: *routingKey,
		HoldETA: *holdETA, NoDeclare: *noDeclare, DefaultQueue: *defaultQueue,
	})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "echoworker: consuming %q on %d channels, prefetch %d\n", *queue, *channels, *prefetch)
	<-ctx.Done()
	w.Stop()
	fmt.Fprintf(os.Stderr, "echoworker: %d results published, %d retries, %d messages dropped\n", w.Processed(), w.Retried(), w.Dropped())
	if err := w.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
