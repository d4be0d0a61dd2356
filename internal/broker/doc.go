// Package broker is stalk's supervised AMQP connection, shared by the amqp,
// revoke and events packages.
//
// A Conn owns one *amqp091.Connection at a time. One supervisor goroutine
// dials it, runs the setup hooks that components registered (open channels,
// declare topology, re-consume), reports Ready, and then waits for the
// connection to close. When it closes for any reason other than Close, the
// supervisor redials with capped exponential backoff and jitter, forever,
// until Close is called. Hooks run again on every new connection, in the
// order they were registered, before the state returns to Ready.
package broker
