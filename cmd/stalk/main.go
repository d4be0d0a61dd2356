// Command stalk sends Celery tasks over RabbitMQ and awaits their results,
// revokes them, pings and inspects workers, follows Celery's event stream
// and draws task graphs. Run "stalk --help" for the commands.
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
