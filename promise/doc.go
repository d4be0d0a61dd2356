// Package promise provides Promise[T], a value that settles exactly once,
// either with a value or with an error.
//
// A Promise offers three ways to observe it:
//
//   - Done returns a channel that is closed once the promise settles. It is
//     the broadcast: any number of goroutines may select on it.
//   - Wait blocks until the promise settles or ctx ends.
//   - Peek (and Settled) read the outcome without blocking.
//
// Then, Catch, Finally and ThenContext register callbacks and return a new
// promise for the callback's outcome. Callbacks never run on the goroutine
// that settles the promise: each promise has its own serial dispatcher, so
// the callbacks registered on one promise run one at a time, in
// registration order, off the settling path. A slow callback delays only the
// callbacks registered after it on the same promise.
//
// The package has no knowledge of AMQP or Celery.
package promise
