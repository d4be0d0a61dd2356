// Package celery is Celery's wire protocol, free of any transport: task
// messages (protocol v2 headers, properties and body), the reprs Celery
// puts in argsrepr and kwargsrepr, JSON as Python's json module writes it,
// decoding task messages, canvas planning (chains and groups as Celery
// sends them), the queue topology model (Celery's task_queues) and native
// delayed delivery routing. The amqp package turns what it builds into
// AMQP publishes; nothing here opens a connection.
package celery
