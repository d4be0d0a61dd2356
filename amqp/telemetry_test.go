package amqp

import (
	"context"
	"crypto/rand"
	"regexp"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// recTracer is a Tracer that gives every span fresh ids and remembers
// its name and parent: enough to check what stalk writes into headers,
// with the OpenTelemetry API only. (integration/otel checks the spans and
// metrics themselves, with the SDK, against a real worker.)
type recTracer struct {
	noop.Tracer
	mu    sync.Mutex
	spans []*recSpan
}

type recSpan struct {
	noop.Span
	name   string
	sc     trace.SpanContext
	parent trace.SpanContext
	ended  bool
}

func (s *recSpan) SpanContext() trace.SpanContext      { return s.sc }
func (s *recSpan) IsRecording() bool                   { return true }
func (s *recSpan) End(...trace.SpanEndOption)          { s.ended = true }
func (t *recTracer) spansNamed(name string) []*recSpan { return filter(t.spans, name) }

func filter(spans []*recSpan, name string) []*recSpan {
	var out []*recSpan
	for _, s := range spans {
		if s.name == name {
			out = append(out, s)
		}
	}
	return out
}

func (t *recTracer) Start(ctx context.Context, name string, _ ...trace.SpanStartOption) (context.Context, trace.Span) {
	parent := trace.SpanContextFromContext(ctx)
	cfg := trace.SpanContextConfig{TraceID: parent.TraceID(), TraceFlags: trace.FlagsSampled, TraceState: parent.TraceState()}
	if !cfg.TraceID.IsValid() {
		_, _ = rand.Read(cfg.TraceID[:])
	}
	_, _ = rand.Read(cfg.SpanID[:])
	s := &recSpan{name: name, sc: trace.NewSpanContext(cfg), parent: parent}
	t.mu.Lock()
	t.spans = append(t.spans, s)
	t.mu.Unlock()
	return trace.ContextWithSpan(ctx, s), s
}

var traceparent = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-01$`)

// The send span's context goes into every task's headers as W3C
// traceparent and tracestate strings: the first message's headers, and
// the header options of the chain steps the worker publishes.
func TestTraceContextInjected(t *testing.T) {
	c := canvasClient(t)
	rec := &recTracer{}
	c.tel = &telemetry{tracer: rec, propagator: propagation.TraceContext{}}
	parentCtx, parent := rec.Start(context.Background(), "request")
	ts, err := trace.ParseTraceState("vendor=value")
	require.NoError(t, err)
	parentCtx = trace.ContextWithSpanContext(parentCtx, parent.SpanContext().WithTraceState(ts))

	ch := NewChain(Sig("tasks.add", Args(1, 2)), Sig("tasks.add", Args(10)), NewGroup(Sig("tasks.mul", Args(2)), Sig("tasks.mul", Args(3))))
	p, err := plan(c, ch, nil)
	require.NoError(t, err)
	spans := c.tel.startSends(parentCtx, p)
	require.Len(t, spans, 1, "a chain is one message")
	sc := spans[0].SpanContext()
	for _, task := range p.Chains[0].AllTasks() {
		tp, ok := task.Call.Headers["traceparent"].(string)
		require.True(t, ok, "%s: traceparent is a string header", task.Name)
		m := traceparent.FindStringSubmatch(tp)
		require.NotNil(t, m, tp)
		assert.Equal(t, parent.SpanContext().TraceID().String(), m[1], "the request's trace")
		assert.Equal(t, sc.SpanID().String(), m[2], "the send span is the parent")
		assert.Equal(t, "vendor=value", task.Call.Headers["tracestate"])
	}
	fr, err := c.planner.Freeze(p, c.cons.mode.queueFor)
	require.NoError(t, err)
	msg := fr.Messages[0]
	assert.Equal(t, p.Chains[0].Tasks[0].Call.Headers["traceparent"], msg.Headers["traceparent"], "a top-level header of the message")
	_, _, embed := body(t, msg)
	require.Len(t, embed.Chain, 2)
	for _, s := range embed.Chain {
		opts := s.Options
		if s.Task == "celery.group" {
			opts = s.Kwargs["tasks"].([]any)[0].(map[string]any)["options"].(map[string]any)
		}
		h := opts["headers"].(map[string]any)
		assert.Equal(t, msg.Headers["traceparent"], h["traceparent"], "%s carries the send's context", s.Task)
	}
	send := rec.spansNamed("send tasks.add")
	require.Len(t, send, 1)
	assert.Equal(t, parent.SpanContext().SpanID(), send[0].parent.SpanID())

	// A group is one message, and one send span, per member.
	p, err = plan(c, NewGroup(Sig("tasks.add"), Sig("tasks.mul")), nil)
	require.NoError(t, err)
	spans = c.tel.startSends(parentCtx, p)
	require.Len(t, spans, 2)
	assert.NotEqual(t, p.Chains[0].Tasks[0].Call.Headers["traceparent"], p.Chains[1].Tasks[0].Call.Headers["traceparent"])
}

// With the global no-op propagator (no SDK configured) nothing is written.
func TestNoTraceContextWithoutPropagator(t *testing.T) {
	c := canvasClient(t)
	c.tel = &telemetry{tracer: noop.NewTracerProvider().Tracer("x")}
	p, err := plan(c, NewChain(Sig("tasks.add")), nil)
	require.NoError(t, err)
	c.tel.startSends(context.Background(), p)
	assert.Empty(t, p.Chains[0].Tasks[0].Call.Headers)
}
