package result

// State is a Celery task state. Custom states (such as "PROGRESS" from
// update_state) are States too.
type State string

// Celery's built-in states.
const (
	Pending  State = "PENDING" // no message seen yet; never sent on the wire
	Received State = "RECEIVED"
	Started  State = "STARTED"
	Retry    State = "RETRY"
	Success  State = "SUCCESS"
	Failure  State = "FAILURE"
	Revoked  State = "REVOKED"
	Rejected State = "REJECTED"
	Ignored  State = "IGNORED"
)

// Ready reports whether s is a ready (final) state: SUCCESS, FAILURE or
// REVOKED.
func (s State) Ready() bool { return s == Success || s == Failure || s == Revoked }

// IsException reports whether s carries an exception as its result: RETRY,
// FAILURE or REVOKED.
func (s State) IsException() bool { return s == Retry || s == Failure || s == Revoked }

// Propagates reports whether Get raises the result of a task in state s:
// FAILURE and REVOKED.
func (s State) Propagates() bool { return s == Failure || s == Revoked }

// IsCustom reports whether s is not one of Celery's built-in states.
func (s State) IsCustom() bool {
	switch s {
	case Pending, Received, Started, Retry, Success, Failure, Revoked, Rejected, Ignored:
		return false
	}
	return true
}

func (s State) String() string { return string(s) }

// precedence follows celery.states.PRECEDENCE: a higher number wins.
func (s State) precedence() int {
	switch s {
	case Success:
		return 8
	case Failure:
		return 7
	case Revoked:
		return 5
	case Started:
		return 4
	case Received:
		return 3
	case Rejected:
		return 2
	case Retry:
		return 1
	case Pending, "":
		return 0
	}
	return 6 // custom states rank between FAILURE and REVOKED, as in Celery
}

// Precedes reports whether s ranks below t in Celery's state precedence,
// meaning s logically happened before t.
func (s State) Precedes(t State) bool { return s.precedence() < t.precedence() }

// validWireState reports whether s may appear in a result message: not
// PENDING, and a name of 1 to 64 characters, a letter and then letters,
// digits, "_", "." or "-".
func validWireState(s State) bool {
	if s == Pending || len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		case i > 0 && ('0' <= c && c <= '9' || c == '_' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}
