package revoke

import "time"

// defaultTimeout is the idle gap that ends reply collection when Wait
// gives none, and the one Ping and Inspect use: Celery's 1.0 s.
const defaultTimeout = time.Second

// command kinds, for option validation.
type kind int

const (
	kindRevoke kind = iota // revoke, revoke_by_stamped_headers
	kindQuery              // ping, inspect: always wants replies
)

// resolve applies opts and validates the result before anything is
// published.
func resolve(k kind, opts []Option) (Options, error) {
	var o Options
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if k == kindQuery {
		if o.Terminate || o.Signal != "" {
			return o, invalid("revoke.Terminate and revoke.Signal apply only to revokes")
		}
		o.Reply = true
	}
	if o.Signal != "" && !o.Terminate {
		return o, invalid("revoke.Signal(%q) needs revoke.Terminate(): the signal only kills running tasks", o.Signal)
	}
	if o.Timeout < 0 {
		return o, invalid("negative reply timeout %s", o.Timeout)
	}
	if o.Limit < 0 {
		return o, invalid("negative reply limit %d", o.Limit)
	}
	if o.Limit > 0 && !o.Reply {
		return o, invalid("revoke.Limit needs revoke.Wait: without it no reply is collected")
	}
	if len(o.Destination) > 0 {
		seen := make(map[string]bool, len(o.Destination))
		dest := make([]string, 0, len(o.Destination))
		for _, d := range o.Destination {
			if d == "" {
				return o, invalid("empty worker name in revoke.Destination")
			}
			if !seen[d] {
				seen[d] = true
				dest = append(dest, d)
			}
		}
		o.Destination = dest
	}
	if o.Reply {
		if o.Timeout == 0 {
			o.Timeout = defaultTimeout
		}
		if o.Limit == 0 {
			o.Limit = len(o.Destination)
		}
	}
	return o, nil
}
