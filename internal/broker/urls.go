package broker

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Failover is the order in which a Conn tries its broker URLs (Celery's
// broker_failover_strategy).
type Failover int

const (
	// RoundRobin tries the URLs in the order given, starting again from the
	// first after the last; after a lost connection it goes on with the
	// next one.
	RoundRobin Failover = iota
	// Shuffle tries them in a random order, shuffled again after every
	// round, so that clients spread over a cluster's nodes.
	Shuffle
)

func (f Failover) String() string {
	switch f {
	case RoundRobin:
		return "round-robin"
	case Shuffle:
		return "shuffle"
	}
	return fmt.Sprintf("Failover(%d)", int(f))
}

// ParseFailover reads Celery's broker_failover_strategy names:
// "round-robin" (or "round_robin") and "shuffle".
func ParseFailover(s string) (Failover, error) {
	switch s {
	case "", "round-robin", "round_robin", "roundrobin":
		return RoundRobin, nil
	case "shuffle":
		return Shuffle, nil
	}
	return 0, fmt.Errorf("stalk: unknown failover strategy %q (want round-robin or shuffle)", s)
}

// ParseURLs splits a broker URL, or Celery's ";"-separated list of them,
// and checks each: amqp:// or amqps://, with a host.
func ParseURLs(raw string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(raw, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		u, err := url.Parse(part)
		if err != nil {
			return nil, fmt.Errorf("stalk: invalid broker URL %q", Redact(part))
		}
		if u.Scheme != "amqp" && u.Scheme != "amqps" {
			return nil, fmt.Errorf("stalk: broker URL %q: scheme must be amqp or amqps", Redact(part))
		}
		if u.Host == "" {
			return nil, fmt.Errorf("stalk: broker URL %q has no host", Redact(part))
		}
		out = append(out, part)
	}
	if len(out) == 0 {
		return nil, errors.New("stalk: broker URL is empty")
	}
	return out, nil
}

// Redact returns rawURL with any password replaced by "xxxxx"; in a
// ";"-separated list of URLs, every one's.
func Redact(rawURL string) string {
	if strings.Contains(rawURL, ";") {
		parts := strings.Split(rawURL, ";")
		for i, p := range parts {
			parts[i] = redactOne(strings.TrimSpace(p))
		}
		return strings.Join(parts, ";")
	}
	return redactOne(rawURL)
}

func redactOne(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		// Fall back to cutting anything between "://" and "@".
		if i := strings.Index(rawURL, "://"); i >= 0 {
			if j := strings.LastIndex(rawURL, "@"); j > i {
				return rawURL[:i+3] + "xxxxx@" + rawURL[j+1:]
			}
		}
		return rawURL
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	return u.String()
}

// redactErr removes the passwords of rawURL (or of each URL of a list)
// from err's text, where they appear.
func redactErr(err error, rawURL string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, part := range strings.Split(rawURL, ";") {
		u, perr := url.Parse(strings.TrimSpace(part))
		if perr != nil || u.User == nil {
			continue
		}
		if pw, has := u.User.Password(); has && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
