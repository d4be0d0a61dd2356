package otel

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

// The trace context of the ctx a task is sent under reaches the Celery
// worker's task.request exactly where opentelemetry-instrumentation-celery
// reads it: the same trace, with the Go "send" span as the parent. For a
// plain task, every step of a chain (the worker publishes steps 2 and 3,
// with the header options stalk froze into them), and a group's members.
func TestTraceContextReachesTheWorker(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	c := dial(t, amqp.WithTracerProvider(tp), amqp.WithPropagator(propagation.TraceContext{}), amqp.WithReplyMode(amqp.Shared))
	reqCtx, req := tp.Tracer("test").Start(ctx, "GET /report")
	ts, err := trace.ParseTraceState("tenant=acme")
	require.NoError(t, err)
	reqCtx = trace.ContextWithSpanContext(reqCtx, req.SpanContext().WithTraceState(ts))

	sendSpan := func(id string) trace.SpanContext {
		t.Helper()
		for _, s := range exp.GetSpans() {
			for _, a := range s.Attributes {
				if a.Key == "messaging.message.id" && a.Value.AsString() == id {
					return s.SpanContext
				}
			}
		}
		t.Fatalf("no send span for task %s", id)
		return trace.SpanContext{}
	}
	check := func(what string, r *result.AsyncResult, parent trace.SpanContext) {
		t.Helper()
		v, err := r.Get(ctx)
		require.NoError(t, err, what)
		info := v.(map[string]any)
		tpHeader, _ := info["traceparent"].(string)
		parts := strings.Split(tpHeader, "-")
		require.Len(t, parts, 4, "%s: traceparent %q", what, tpHeader)
		assert.Equal(t, req.SpanContext().TraceID().String(), parts[1], "%s: the request's trace", what)
		assert.Equal(t, parent.SpanID().String(), parts[2], "%s: the Go send span is the parent", what)
		assert.Equal(t, "01", parts[3], "%s: sampled", what)
		assert.Equal(t, "tenant=acme", info["tracestate"], what)
	}

	r, err := c.Send(reqCtx, "tasks.traceinfo")
	require.NoError(t, err)
	check("plain task", r, sendSpan(r.ID()))

	last, err := c.Chain(reqCtx, amqp.NewChain(amqp.Sig("tasks.traceinfo"), amqp.Sig("tasks.traceinfo"), amqp.Sig("tasks.traceinfo")))
	require.NoError(t, err)
	first := last.Parent().Parent()
	span := sendSpan(first.ID())
	for i, step := range []*result.AsyncResult{first, last.Parent(), last} {
		check("chain step "+string(rune('1'+i)), step, span)
	}

	g, err := c.Group(reqCtx, amqp.NewGroup(amqp.Sig("tasks.traceinfo"), amqp.Sig("tasks.traceinfo")))
	require.NoError(t, err)
	for _, m := range g.Results() {
		check("group member", m, sendSpan(m.ID()))
	}
	req.End()

	// Each result's arrival is a "result" span, a child of its send span.
	require.Eventually(t, func() bool {
		for _, s := range exp.GetSpans() {
			if s.Name == "result tasks.traceinfo" && s.Parent.SpanID() == sendSpan(r.ID()).SpanID() {
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond)
}
