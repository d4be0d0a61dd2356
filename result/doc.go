// Package result is Celery's AsyncResult in Go: the client-side view of a
// task's states and outcome.
//
// An AsyncResult is a handle on one task id. Its non-blocking accessors
// (State, Ready, Result, Traceback, ...) read the latest state the backend
// has seen; Get and Wait block, under a context, until the task reaches a
// ready state (SUCCESS, FAILURE or REVOKED). Then registers callbacks that
// run off the delivery path.
//
// The package knows nothing about AMQP. It defines the Backend interface
// that a transport implements (stalk's amqp package does), the Entry that
// records one task's states, and the wire types shared by every transport:
// State, Meta (a decoded result message), TaskError (a decoded Celery
// exception) and the decoders for Celery's JSON.
package result
