package broker

import (
	"errors"
	"fmt"
	"strings"

	"github.com/stalk-dev/stalk/result"
)

var (
	// ErrClosed is returned by operations on a closed Conn or Publisher.
	// It is result.ErrClosed: one value for every stalk package.
	ErrClosed = result.ErrClosed

	// ErrAccessRefused is wrapped by errors caused by the broker refusing
	// the credentials, the vhost or a permission.
	ErrAccessRefused = errors.New("stalk: access refused by the broker")

	// ErrUnroutable is wrapped when the broker returned a mandatory publish
	// because it routes to no queue (312 NO_ROUTE).
	ErrUnroutable = errors.New("stalk: the message routes to no queue")

	// ErrExchangeNotFound is wrapped when a publish names an exchange that
	// does not exist (404 NOT_FOUND).
	ErrExchangeNotFound = errors.New("stalk: exchange not found")

	// ErrNotConfirmed is wrapped when the broker did not confirm a publish:
	// it nacked it, or the wait for the confirm ended first. In the second
	// case the message may still be delivered.
	ErrNotConfirmed = errors.New("stalk: broker did not confirm the publish")
)

// UnroutableError is a mandatory publish the broker returned.
type UnroutableError struct {
	Exchange, Key string
	Code          uint16
	Text          string
}

func (e *UnroutableError) Error() string {
	ex := e.Exchange
	if ex == "" {
		ex = "the default exchange"
	} else {
		ex = fmt.Sprintf("exchange %q", ex)
	}
	return fmt.Sprintf("stalk: the message routes to no queue: %s with routing key %q (%d %s): no queue is bound for it, or its queue's node is down", ex, e.Key, e.Code, e.Text)
}

func (e *UnroutableError) Unwrap() error { return ErrUnroutable }

// ExchangeNotFoundError is a publish to an exchange that does not exist.
type ExchangeNotFoundError struct {
	Exchange string
	Err      error // the channel close, when the broker reported it so
}

func (e *ExchangeNotFoundError) Error() string {
	return fmt.Sprintf("stalk: exchange %q does not exist (404 NOT_FOUND)", e.Exchange)
}

func (e *ExchangeNotFoundError) Is(target error) bool { return target == ErrExchangeNotFound }
func (e *ExchangeNotFoundError) Unwrap() error        { return e.Err }

// Unprefixed keeps err for errors.Is and errors.As but drops the "stalk: "
// its text starts with, so that wrapping it under another "stalk: ..."
// says it once.
func Unprefixed(err error) error {
	if err == nil || !strings.HasPrefix(err.Error(), "stalk: ") {
		return err
	}
	return &unprefixed{err}
}

type unprefixed struct{ err error }

func (u *unprefixed) Error() string { return strings.TrimPrefix(u.err.Error(), "stalk: ") }
func (u *unprefixed) Unwrap() error { return u.err }
