package revoke

import (
	"encoding/json"
	"fmt"
	"time"
)

// Option configures a revoke or another control command.
type Option func(*Options)

// Options is the resolved set of Option values. Commands validate it before
// anything is published.
type Options struct {
	Terminate   bool          // kill the task if it is running (revoke only)
	Signal      string        // signal name for Terminate; "" means the worker's default, SIGTERM
	Destination []string      // worker nodenames; empty means every worker
	Reply       bool          // ask the workers to reply, and collect the replies
	Timeout     time.Duration // idle gap between replies that ends collection (default 1 s)
	Limit       int           // stop after this many replies; default len(Destination), else no limit
}

// Terminate kills the task if it is already running, with Signal's signal
// (SIGTERM by default). Default: off; a running task finishes.
func Terminate() Option { return func(o *Options) { o.Terminate = true } }

// Signal sets the signal Terminate sends, by name ("SIGKILL", "KILL") or
// number ("9"). Default: SIGTERM.
func Signal(sig string) Option { return func(o *Options) { o.Signal = sig } }

// Destination limits the command to the named workers (e.g.
// "celery@host"). Default: every worker.
func Destination(workers ...string) Option {
	return func(o *Options) { o.Destination = append(o.Destination, workers...) }
}

// Wait asks the workers to reply and collects replies until none has
// arrived for timeout (Celery's `timeout`: an idle gap, not a deadline), the
// Limit is reached, or ctx ends. Without Wait, a revoke is
// publish-and-confirm only. Default idle timeout: 1 s.
func Wait(timeout time.Duration) Option {
	return func(o *Options) {
		o.Reply = true
		o.Timeout = timeout
	}
}

// Limit stops collecting after n replies. Default: the number of
// destinations when Destination is given, otherwise no limit.
func Limit(n int) Option { return func(o *Options) { o.Limit = n } }

// Reply is one worker's answer to a control command.
type Reply struct {
	Worker string          // the worker's nodename, e.g. "celery@host"
	OK     string          // the "ok" text, when the worker reported success
	Error  string          // the "error" text, when it reported a failure
	Value  json.RawMessage // the whole reply value, for commands whose answer is data
}

// Err returns an error naming the worker when the reply reports one.
func (r Reply) Err() error {
	if r.Error == "" {
		return nil
	}
	return fmt.Errorf("stalk: worker %s: %s", r.Worker, r.Error)
}
