// Package stalk is the root of a Go library for services that hand work to
// Python Celery workers over RabbitMQ and get the results back: Celery's
// AsyncResult, done the Go way. This package holds no code; the library
// is in its packages:
//
//   - amqp: the Client. Dial, Send, Chain, Group and Apply publish Celery
//     protocol v2 task messages with publisher confirms; one event-driven
//     consumer reads results from per-task or shared reply queues. Queue
//     topology (quorum queues, native delayed delivery), clusters and
//     failover, OpenTelemetry.
//   - result: AsyncResult, ResultSet and GroupResult, Meta, TaskError,
//     tuples and graphs; transport-free.
//   - promise: the generic Promise the results are built on.
//   - revoke: Celery's remote control over celery.pidbox: revoke,
//     revoke_by_stamped_headers, ping, inspect and control commands.
//   - events: Celery's event stream, and the task and worker state Flower
//     keeps.
//   - cmd/stalk: the command line.
//
// See the README for a tour, the guarantees and the numbers.
package stalk
