package result

import (
	"encoding/json"
	"fmt"
	"time"
)

// ControlOption configures a revoke or another remote-control command. The
// revoke package's options (revoke.Terminate, revoke.Signal, revoke.Wait,
// ...) are ControlOptions; result defines the type so that AsyncResult can
// take them without depending on a transport.
type ControlOption func(*ControlOptions)

// ControlOptions is the resolved set of ControlOption values. Commands
// validate it before anything is published.
type ControlOptions struct {
	Terminate   bool          // kill the task if it is running (revoke only)
	Signal      string        // signal name for Terminate; "" means the worker's default, SIGTERM
	Destination []string      // worker nodenames; empty means every worker
	Reply       bool          // ask the workers to reply, and collect the replies
	Timeout     time.Duration // idle gap between replies that ends collection (default 1 s)
	Limit       int           // stop after this many replies; default len(Destination), else no limit
}

// ResolveControlOptions applies opts in order.
func ResolveControlOptions(opts []ControlOption) ControlOptions {
	var o ControlOptions
	for _, fn := range opts {
		if fn != nil {
			fn(&o)
		}
	}
	return o
}

// ControlReply is one worker's answer to a remote-control command.
type ControlReply struct {
	Worker string          // the worker's nodename, e.g. "celery@host"
	OK     string          // the "ok" text, when the worker reported success
	Error  string          // the "error" text, when it reported a failure
	Value  json.RawMessage // the whole reply value, for commands whose answer is data
}

// Err returns an error naming the worker when the reply reports one.
func (r ControlReply) Err() error {
	if r.Error == "" {
		return nil
	}
	return fmt.Errorf("stalk: worker %s: %s", r.Worker, r.Error)
}
