package amqp

import "context"

// extensions are hooks the optional parts of the client (events, control)
// install.
type extensions struct {
	afterSend func(ctx context.Context, msg *taskMessage)
	close     func()
}
