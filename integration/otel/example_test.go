package otel_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/stalk-dev/stalk/amqp"
)

// One trace from a Go request into the Celery task: the SDK prints every
// span (stalk's send and result spans here; the worker exports its own
// run/<task> span, a child of send) to stdout. Run against a broker and a
// worker: go test -run Example ./integration/otel/ -v
func Example_tracing() {
	exp, err := stdouttrace.New(stdouttrace.WithPrettyPrint(), stdouttrace.WithWriter(os.Stdout))
	if err != nil {
		fmt.Println(err)
		return
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := amqp.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	ctx, span := tp.Tracer("example").Start(ctx, "GET /sum")
	defer span.End()
	r, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3)) // carries traceparent
	if err != nil {
		fmt.Println(err)
		return
	}
	v, err := r.Get(ctx)
	fmt.Println(v, err)
}
