// Package echoworker is a fast Go worker that speaks Celery's task protocol
// v2, so that a benchmark measures the client and not the worker. In tests
// it also stands in for a Celery 5.5/5.6 worker on quorum queues, which the
// Celery 5.2.6 that CI runs cannot consume (it uses global QoS).
//
// It consumes task messages from one queue on several channels with manual
// acknowledgement and a per-consumer prefetch window (basic.qos with
// global=false, which quorum queues require). By default it declares the
// queue as Celery declares its queues: durable, not auto-deleted, no
// arguments. Config.QueueType "quorum" adds x-queue-type=quorum;
// Config.Exchange declares that exchange (durable, Config.ExchangeType,
// default direct) and binds the queue to it with Config.RoutingKey
// (default: the queue name), as a Celery worker declares an entry of its
// task_queues; Config.NoDeclare declares nothing. The worker does not
// declare native delayed delivery (celery_delayed_0…27 and
// celery_delayed_delivery), which a real 5.5+ worker on quorum queues does:
// use harness.DeclareDelayedDelivery.
//
// For each task it publishes a SUCCESS result to the default exchange with
// routing key reply_to and correlation_id set, exactly as a Celery 5
// worker's rpc:// backend does:
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
// # ETA tasks
//
// With Config.HoldETA a task whose eta header (ISO-8601; naive means UTC)
// is in the future is held in memory, unacknowledged, until its ETA and
// only then run, as a Celery worker does. On a quorum queue a Celery 5.5+
// worker's prefetch is fixed ("Global QoS is disabled. Prefetch count in
// now static."), so held tasks keep their prefetch slots: with Prefetch 10
// and 10 held tasks on one channel a plain task waits for them. The echo
// worker's prefetch is always fixed, so the same happens on any queue. An
// eta that does not parse drops the task (Celery rejects it as invalid).
// Without HoldETA the eta header is ignored, as before. Held tasks that are
// still waiting at Stop go back to the queue.
//
// # Retries
//
// The task echo.retry, args [times, countdown], behaves like this Celery
// task:
//
//	@app.task(bind=True, name="echo.retry")
//	def retry(self, times, countdown):
//	    if self.request.retries < times:
//	        raise self.retry(countdown=countdown)
//	    return self.request.retries
//
// Each retry sends a RETRY state to reply_to,
//
//	{"task_id": "<id>", "status": "RETRY", "result": {"exc_type": "Retry", "exc_message": ["Retry in <countdown>s"], "exc_module": "celery.exceptions"}, "traceback": null, "children": []}
//
// and then republishes the task: same id, body, reply_to and
// correlation_id, retries+1, eta = now+countdown (null for a countdown of
// 0), parent_id = its own id when it had none, delivery_mode 2, its other
// headers copied except the x-death family (Celery drops them so that
// RabbitMQ does not see a dead-letter cycle) and x-delivery-count. The
// final answer is SUCCESS with the number of retries. (A real worker sends
// the RETRY state after the republish, with result = the exc passed to
// retry(), null here, and the Retry's traceback as a string; this shape was
// chosen for the tests that use the echo worker.)
//
// Where the retry goes follows Celery 5.6.3's source (celery/app/task.py
// Task.retry and signature_from_request; celery/app/base.py send_task lines
// 842-990; celery/app/amqp.py send_task_message; kombu 5.6
// native_delayed_delivery.calculate_routing_key):
//
//   - signature_from_request turns delivery_info into routing options. A
//     task delivered through exchange "" gets queue=<routing key>, i.e. this
//     worker's queue; any other task gets exchange and routing_key from
//     delivery_info and no queue, so the router adds the app's default
//     route: task_routes, else task_default_queue (Config.DefaultQueue,
//     default "celery", which Celery creates on a direct exchange).
//   - send_task, when the app has a quorum queue, looks at the exchange type
//     of that routed queue, not at the exchange the task came through. If it
//     is not direct and the countdown is > 0, the task goes to exchange
//     celery_delayed_27 with routing key = the 28 binary digits of
//     int(countdown), dot-joined, + "." + the routed queue's routing key
//     (Config.RoutingKey). For 0 < countdown < 1, int() gives 0 and
//     calculate_routing_key raises ValueError("countdown must be a positive
//     number"); Task.retry turns every publish error into
//     Reject(requeue=False), so the task is dropped with no RETRY and no
//     result. The echo worker acks it and counts it in Dropped.
//   - Otherwise (routed queue on a direct exchange, which also logs
//     "Direct exchanges are not supported with native delayed delivery",
//     or a countdown of 0) it is published directly with its eta: for a
//     task delivered through "", to "" with the queue name (direct) or to
//     the queue's exchange and routing key; for any other, to the exchange
//     and routing key it was delivered with. With HoldETA the worker then
//     holds it.
//
// So the answer to "what does Celery do for a countdown under 1 s on the
// queue's own exchange" is: it depends on the app's routing, not on the
// exchange. With the fixture's app (task_queues=[that queue],
// task_default_queue left at "celery") the retry is republished straight to
// the queue's exchange with an eta and held, which is what the fixture
// observed; and for the same reason a retry with a countdown >= 1 s on the
// queue's own exchange does not use delayed delivery either. With
// DefaultQueue = Queue (task_default_queue is the queue, or task_routes
// sends the task there) retries on the own exchange use delayed delivery
// for countdown >= 1 s, and a countdown under 1 s is rejected as with "".
// A retry that went through delayed delivery arrives through exchange
// celery_delayed_delivery (or a celery_delayed_N) with the binary routing
// key, so with the default DefaultQueue its next retry is published
// straight back there, with an eta.
//
// The republish needs celery_delayed_27 to exist when it goes through
// delayed delivery; if it does not, the broker closes that channel (404)
// and Err reports it.
//
// # Receipts
//
// With Config.Record the worker keeps, for the last 100,000 task ids, what
// it received (exchange, routing key, time, eta, headers) for Received and
// Receipts. Off by default, so the benchmark does not pay for it.
//
// Each channel is owned by one goroutine, which consumes, publishes the
// results and retries and acks on that same channel. Acks are batched with
// multiple=true whenever the delivery buffer runs dry, or every half
// prefetch window; while the channel holds ETA tasks, other messages are
// acked one by one so that no multiple ack covers a held task.
package echoworker
