// Package echoworker is a fast Go worker that speaks Celery's task protocol
// v2, so that a benchmark measures the client and not the worker.
//
// It consumes task messages from one queue (declared as Celery declares
// its queues: durable, not auto-deleted, no arguments) on several channels
// with manual acknowledgement and a prefetch window. For each task it
// publishes a SUCCESS result to the default exchange with routing key
// reply_to and correlation_id set, exactly as a Celery 5 worker's rpc://
// backend does:
//
//	{"task_id": "<id>", "status": "SUCCESS", "result": <r>, "traceback": null, "children": []}
//
// with content_type application/json, content_encoding utf-8,
// delivery_mode 1 and priority 0. The result r is the task's only
// positional argument, or the whole args list when there are zero or
// several. A task with an empty reply_to gets no result, as with Celery.
// Messages without a "task" header or with an undecodable body are acked
// and dropped, again as a Celery worker does.
//
// One difference from a Python worker is invisible to consumers: Celery
// sends an empty headers table on results, while amqp091-go leaves an empty
// table off the wire, so the headers property is absent.
//
// Each channel is owned by one goroutine, which consumes, publishes the
// results and acks on that same channel. Acks are batched with
// multiple=true whenever the delivery buffer runs dry, or every half
// prefetch window.
package echoworker
