// Package revoke is Celery's remote control over the celery.pidbox fanout
// exchange: revoke, revoke_by_stamped_headers, ping and inspect, with
// replies collected from reply.celery.pidbox and matched by ticket.
//
// # Use
//
// The amqp client's AsyncResult.Revoke goes through a Controller on the
// client's connection. Standalone, Dial one:
//
//	c, err := revoke.Dial(ctx, "amqp://guest:guest@localhost:5672/")
//	if err != nil { ... }
//	defer c.Close()
//
//	// Fire and forget: returns once the broker has confirmed the broadcast.
//	_, err = c.Revoke(ctx, []string{id})
//
//	// Kill it if it runs, and read what the workers say.
//	replies, err := c.Revoke(ctx, []string{id},
//		revoke.Terminate(), revoke.Signal("SIGKILL"), revoke.Wait(2*time.Second))
//
//	// Who is alive?
//	pongs, err := c.Ping(ctx, revoke.Destination("celery@web-1", "celery@web-2"))
//
// # What a revoke does
//
// A revoke is a broadcast: every worker adds the ids to its in-memory
// revoked set (lost when the worker restarts, unless it runs with
// --statedb; a worker started later never hears of it). A worker that then
// meets a revoked task, queued or waiting for its eta, discards it and
// publishes a REVOKED result ("revoked"). With Terminate, the worker
// running the task kills it with the signal, and the result is REVOKED
// ("terminated"). A task that already finished is not affected.
//
// # Replies
//
// Without Wait a revoke asks for no reply. With Wait, and always for Ping
// and Inspect, the Controller collects replies until Limit of them have
// arrived (default: the number of Destination workers), no reply has come
// for the idle timeout (default 1 s: Celery's timeout is a gap between
// replies, not a deadline), or ctx ends. A broadcast with no Destination
// reaches every worker on the broker's vhost, and collection ends only at
// the idle timeout.
//
// Each Reply carries the worker's nodename, its "ok" or "error" text, and
// the raw JSON value. An error reply becomes a *WorkerError; a named
// Destination that stays silent, or a broadcast nobody answers, an error
// wrapping ErrNoReply. Commands return the replies together with those
// errors, joined. Celery 5.2 workers do not know revoke_by_stamped_headers
// and answer it with "KeyError('revoke_by_stamped_headers')".
//
// Signals are sent by name in Celery's form ("kill" and "KILL" become
// "SIGKILL"); numbers ("9") are sent as numbers, which the worker reads in
// its own platform's numbering.
//
// # Goroutines and the reply queue
//
// A Controller runs one goroutine, which owns the consumer of its reply
// queue (<oid>.reply.celery.pidbox, bound to reply.celery.pidbox with key
// <oid>) and hands each reply to the command waiting for its ticket.
// Replies to a ticket nobody waits for are kept briefly (256 tickets, 5
// minutes) and counted by Dropped when evicted. The queue is durable, not
// auto-delete, with x-expires 10 s and x-message-ttl 300 s: it outlives a
// dropped connection long enough for the redial, and RabbitMQ 4.3+, which
// refuses transient queues that are not exclusive, accepts it. It is
// declared by the first command that wants replies and again, by a broker
// hook, on every reconnect. Publishing uses its own channel in confirm mode.
package revoke
