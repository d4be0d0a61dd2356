// Package amqp is stalk's broker side: a Client that publishes Celery
// protocol v2 task messages to RabbitMQ with publisher confirms, and one
// event-driven consumer that reads the tasks' results from AMQP reply
// queues and settles the promises behind result.AsyncResult.
//
// # Reply modes
//
// PerTask (the default) gives every task its own durable reply queue, named
// from the task id, with x-expires set to the result lifetime. Any process
// that knows a task id can attach to its queue (Client.AsyncResult), and the
// final state stays in the queue for other readers until it expires or is
// forgotten. A queue per task costs a queue.declare, a basic.consume and a
// basic.cancel per task, so this mode is bounded by the broker's queue
// churn (about a thousand queues a second on a small machine).
//
// Shared gives the client one durable reply queue, with x-expires, and
// routes results by task id, as Celery's rpc:// backend does. It is the fast
// path. With a stable name (WithReplyQueue) a restarted process gets back
// the results of tasks it sent before it stopped.
//
// # Goroutines and ordering
//
// The client owns two supervised connections: one for publishing, one for
// results. One consumer goroutine decodes every result message, records it
// on the task's result.Entry and settles its promise; it never runs user
// code. Callbacks registered with Then run on the promise's own dispatcher,
// OnMessage callbacks on the goroutine that called Get. The number of AMQP
// channels is fixed: one for publishing, and one (Shared) or WithLanes
// (PerTask) for results, however many results are pending. In PerTask mode
// each pending result also holds a consumer on the broker and two goroutines
// (amqp091-go's delivery buffer and stalk's forwarder), about 10 KB in all;
// a client follows an id until its result arrives, it is forgotten or
// released (result.AsyncResult.Release), or the client closes.
//
// # Reconnects
//
// When a connection drops, the client redials with capped exponential
// backoff and jitter until Close, redeclares its queues, re-consumes every
// reply queue with pending results, and only then reports Ready. Pending
// promises are kept. Messages that were delivered but not acknowledged are
// redelivered by the broker; states never go backwards, so a redelivery
// changes nothing.
package amqp
