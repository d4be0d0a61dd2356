// Package otel tests stalk's OpenTelemetry instrumentation with the
// OpenTelemetry SDK, against a real RabbitMQ and a real Celery worker. It
// is a module of its own (joined to the library's by go.work), so that the
// library's module requires only the OpenTelemetry API; cmd/tracecost
// measures what tracing costs a client.
package otel
