package revoke

import (
	"fmt"
	"strconv"
	"strings"
)

// knownSignals are the signal names a Celery worker's platform may define
// (POSIX plus the Linux and BSD extras). Names go on the wire, not numbers,
// because numbers differ between platforms.
var knownSignals = map[string]bool{
	"SIGHUP": true, "SIGINT": true, "SIGQUIT": true, "SIGILL": true, "SIGTRAP": true,
	"SIGABRT": true, "SIGIOT": true, "SIGBUS": true, "SIGFPE": true, "SIGKILL": true,
	"SIGUSR1": true, "SIGSEGV": true, "SIGUSR2": true, "SIGPIPE": true, "SIGALRM": true,
	"SIGTERM": true, "SIGSTKFLT": true, "SIGCHLD": true, "SIGCLD": true, "SIGCONT": true,
	"SIGSTOP": true, "SIGTSTP": true, "SIGTTIN": true, "SIGTTOU": true, "SIGURG": true,
	"SIGXCPU": true, "SIGXFSZ": true, "SIGVTALRM": true, "SIGPROF": true, "SIGWINCH": true,
	"SIGIO": true, "SIGPOLL": true, "SIGPWR": true, "SIGSYS": true, "SIGEMT": true,
	"SIGINFO": true, "SIGRTMIN": true, "SIGRTMAX": true,
}

// maxSignal is the largest signal number accepted (Linux's SIGRTMAX).
const maxSignal = 64

// defaultSignal is what a terminating revoke sends when Signal is not
// given, as Celery's app.control.revoke does.
const defaultSignal = "SIGTERM"

// normalizeSignal turns a user's signal into its wire form. Names are
// accepted with or without the SIG prefix, in any case, and go out in
// Celery's canonical form ("kill" → "SIGKILL"): a 5.x worker rejects names
// that are not upper case. Numbers ("9") go out as JSON integers, which the
// worker uses as they are; as a string a number would make the worker fail
// with "signal name must be uppercase string".
func normalizeSignal(sig string) (any, error) {
	s := strings.TrimSpace(sig)
	if s == "" {
		return defaultSignal, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > maxSignal {
			return nil, fmt.Errorf("%w: %w: %q: signal numbers run from 1 to %d", ErrInvalidArgument, ErrInvalidSignal, sig, maxSignal)
		}
		return n, nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if !knownSignals[name] {
		return nil, fmt.Errorf("%w: %w: %q is not a signal name (use e.g. \"SIGTERM\", \"KILL\" or \"9\")", ErrInvalidArgument, ErrInvalidSignal, sig)
	}
	return name, nil
}
