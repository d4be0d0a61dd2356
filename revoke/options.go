package revoke

import (
	"time"

	"github.com/stalk-dev/stalk/result"
)

// Option configures a revoke or another control command. It is
// result.ControlOption, so that result.AsyncResult.Revoke takes the same
// options.
type Option = result.ControlOption

// Options is the resolved set of Option values. Commands validate it before
// anything is published.
type Options = result.ControlOptions

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
type Reply = result.ControlReply
