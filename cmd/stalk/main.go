// Command stalk is Celery's command line for RabbitMQ: it sends tasks and
// canvases (call, chain, group, apply) and awaits their results, reads
// results by id (result, graph), revokes tasks, asks the workers what they
// run and changes how they run (status, ping, inspect, control), purges
// task queues and follows Celery's event stream. Run "stalk --help" for the
// commands; docs/cli.md shows each with real output.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], newEnv())
	stop()
	os.Exit(code)
}
