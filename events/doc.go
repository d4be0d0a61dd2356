// Package events reads Celery's event stream (the celeryev exchange),
// keeps Celery's model of task and worker state built from it, and
// publishes the task-sent events Celery clients send.
//
// # Receiving
//
// A Receiver has its own queue, celeryev.<uuid>, bound to the celeryev
// topic exchange with "#" (or Bind's patterns), with x-message-ttl 5 s and
// x-expires 60 s as Celery's receiver declares it. The queue is exclusive
// by default, durable with the Durable option, and never transient and
// shared: RabbitMQ 4.3 refuses that. It is declared and consumed again on
// every reconnect. Dial owns its connection; NewReceiver uses one the
// caller owns (the amqp client's).
//
// Bodies are decoded as single events or as task.multi arrays (workers
// batch task events; "[]" happens). Every event type becomes a typed
// value (*TaskSucceeded, *WorkerHeartbeat, ...), and types this package
// does not know become *Unknown with all their fields. Non-JSON content
// types (pickle, YAML) are refused by name, and malformed bodies are
// counted (Stats), logged and skipped: they never stop the stream.
//
// # Subscriptions
//
// Subscribe attaches a handler. The consumer goroutine never runs handler
// code: it offers each event to every subscription's bounded buffer
// (DefaultBuffer events unless Buffer says otherwise) and moves on. Each
// subscription runs its handler on its own goroutine, in order. When a
// buffer is full the newest (or, with OnOverflow(DropOldest), the oldest)
// event is dropped, counted in SubStats.Dropped and Stats.Dropped, and
// logged at most once a second. Results are never carried by events, so
// dropping under pressure loses no result; it only makes the State older.
//
// # State
//
// State merges events as Celery's celery.events.state (and Flower) does:
// out-of-order events by state precedence (SUCCESS > FAILURE > custom >
// REVOKED > STARTED > RECEIVED > REJECTED > RETRY > PENDING; a late event
// of lower rank only adds fields; RETRY always overwrites), and worker
// liveness by heartbeat freshness (alive while now < last heartbeat +
// 2·freq; worker-offline clears it). It keeps at most MaxTasks tasks,
// evicting finished tasks first. OnTask reports every change.
//
// # Publishing task-sent
//
// PublishTaskSent publishes a task-sent event with Celery's fields to
// celeryev, routing key task.sent, as Celery's client does with
// task_send_sent_event; Python's celery.events receivers and Flower see it.
//
// # Example
//
// Print live task states:
//
//	recv, err := events.Dial(ctx, "amqp://guest:guest@localhost:5672/")
//	if err != nil {
//		return err
//	}
//	defer recv.Close()
//	st := events.NewState()
//	st.OnTask(func(t events.Task) {
//		fmt.Printf("%s %s %s on %s\n", t.ID, t.Name, t.State, t.Worker)
//	})
//	sub, err := recv.Subscribe(ctx, st.Apply, events.OnlyTasks())
//	if err != nil {
//		return err
//	}
//	<-sub.Closed() // until ctx ends
//
// Goroutines: a Receiver runs one consumer goroutine per connection and
// one goroutine per subscription; Close stops and waits for all of them.
// Lock order: Receiver.mu, then Subscription.mu; State.mu is never held
// while a handler or hook runs.
package events
