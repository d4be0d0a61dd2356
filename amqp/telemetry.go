package amqp

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/stalk-dev/stalk/internal/celery"
	"github.com/stalk-dev/stalk/result"
)

// instrumentation is the OpenTelemetry instrumentation scope of stalk's
// spans and metrics.
const instrumentation = "github.com/stalk-dev/stalk"

// WithTracerProvider sets where stalk's spans go. Default: the global
// provider (otel.GetTracerProvider()), which is a no-op until an SDK is
// installed.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tracerProvider = tp }
}

// WithMeterProvider sets where stalk's metrics go. Default: the global
// provider (otel.GetMeterProvider()).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.meterProvider = mp }
}

// WithPropagator sets how the trace context is written into task message
// headers. Default: the global propagator (otel.GetTextMapPropagator()),
// which writes nothing until one is set; with the W3C TraceContext
// propagator it writes traceparent and tracestate, where the Python
// worker's opentelemetry-instrumentation-celery reads them.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.propagator = p }
}

// telemetry holds the client's tracer, propagator and instruments.
type telemetry struct {
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator

	sent      metric.Int64Counter
	completed metric.Int64Counter
	duration  metric.Float64Histogram
	confirm   metric.Float64Histogram

	pubReconnects atomic.Int64
	reg           metric.Registration

	// attrs caches the attribute sets of the metrics, by their values:
	// task names, queues and states are few, and a set built once costs
	// nothing per task.
	attrMu sync.RWMutex
	attrs  map[attrKey]metric.MeasurementOption
	starts map[string]spanStart // by task name
}

// attrKey is two attribute pairs; the keys are the call site's constants.
type attrKey struct{ k1, v1, k2, v2 string }

// maxAttrSets bounds the cache: past it (many task names), sets are built
// per call instead of kept.
const maxAttrSets = 4096

// attrOpt returns the cached attribute option for the pairs k1=v1, k2=v2.
func (t *telemetry) attrOpt(k1, v1, k2, v2 string) metric.MeasurementOption {
	key := attrKey{k1, v1, k2, v2}
	t.attrMu.RLock()
	o, ok := t.attrs[key]
	t.attrMu.RUnlock()
	if ok {
		return o
	}
	o = metric.WithAttributeSet(attribute.NewSet(attribute.String(k1, v1), attribute.String(k2, v2)))
	t.attrMu.Lock()
	if t.attrs == nil {
		t.attrs = make(map[attrKey]metric.MeasurementOption)
	}
	if len(t.attrs) < maxAttrSets {
		t.attrs[key] = o
	}
	t.attrMu.Unlock()
	return o
}

func newTelemetry(c *Client) *telemetry {
	tp := c.cfg.tracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	mp := c.cfg.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	t := &telemetry{tracer: tp.Tracer(instrumentation), propagator: c.cfg.propagator}
	m := mp.Meter(instrumentation)
	// Instrument errors come from invalid names or units, which are fixed
	// here; the API hands back a working no-op instrument regardless.
	t.sent, _ = m.Int64Counter("stalk.tasks.sent", metric.WithUnit("{task}"),
		metric.WithDescription("Tasks published and confirmed by the broker."))
	t.completed, _ = m.Int64Counter("stalk.tasks.completed", metric.WithUnit("{task}"),
		metric.WithDescription("Tasks whose final state (SUCCESS, FAILURE, REVOKED) arrived."))
	t.duration, _ = m.Float64Histogram("stalk.task.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a task's send to its final state."))
	t.confirm, _ = m.Float64Histogram("stalk.publish.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a publish waited for the broker's confirm."))
	pending, _ := m.Int64ObservableGauge("stalk.results.pending", metric.WithUnit("{result}"),
		metric.WithDescription("Results somebody asked for that have not arrived."))
	messages, _ := m.Int64ObservableCounter("stalk.result.messages", metric.WithUnit("{message}"),
		metric.WithDescription("Result messages received, by what became of them (stalk.outcome)."))
	reconnects, _ := m.Int64ObservableCounter("stalk.connection.reconnects", metric.WithUnit("{reconnect}"),
		metric.WithDescription("Reconnections, by connection (stalk.connection: results or publish)."))
	state, _ := m.Int64ObservableGauge("stalk.connection.ready", metric.WithUnit("1"),
		metric.WithDescription("1 while the connection is Ready, else 0, by connection."))
	c.pubConn.OnStateChange(func(s ConnState) {
		if s == Reconnecting {
			t.pubReconnects.Add(1)
		}
	})
	outcome := func(v string) metric.ObserveOption {
		return metric.WithAttributes(attribute.String("stalk.outcome", v))
	}
	connAttr := func(v string) metric.ObserveOption {
		return metric.WithAttributes(attribute.String("stalk.connection", v))
	}
	ready := func(s ConnState) int64 {
		if s == Ready {
			return 1
		}
		return 0
	}
	t.reg, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := c.Stats()
		o.ObserveInt64(pending, int64(st.Pending))
		o.ObserveInt64(messages, st.Received, outcome("received"))
		o.ObserveInt64(messages, st.Malformed, outcome("malformed"))
		o.ObserveInt64(messages, st.Orphans, outcome("orphan"))
		o.ObserveInt64(messages, st.Duplicates, outcome("duplicate"))
		o.ObserveInt64(messages, st.Stale, outcome("stale"))
		o.ObserveInt64(reconnects, st.Reconnects, connAttr("results"))
		o.ObserveInt64(reconnects, t.pubReconnects.Load(), connAttr("publish"))
		o.ObserveInt64(state, ready(c.resConn.State()), connAttr("results"))
		o.ObserveInt64(state, ready(c.pubConn.State()), connAttr("publish"))
		return nil
	}, pending, messages, reconnects, state)
	return t
}

func (t *telemetry) close() {
	if t != nil && t.reg != nil {
		_ = t.reg.Unregister()
	}
}

func (t *telemetry) propagatorOrGlobal() propagation.TextMapPropagator {
	if t.propagator != nil {
		return t.propagator
	}
	return otel.GetTextMapPropagator()
}

// headerCarrier writes the trace context into task headers as strings:
// AMQP long strings, which py-amqp reads as str (a byte array would make
// the Python instrumentation raise).
type headerCarrier map[string]any

func (h headerCarrier) Get(key string) string { s, _ := h[key].(string); return s }
func (h headerCarrier) Set(key, value string) { h[key] = value }
func (h headerCarrier) Keys() []string {
	out := make([]string, 0, len(h))
	for k := range h {
		out = append(out, k)
	}
	return out
}

// startSends starts one producer span per message a plan publishes and
// writes each span's context into the headers of every task of its chain:
// the first task's message headers, and the header options of the steps
// the worker publishes (Celery merges them into those messages' headers).
// It returns the spans, by chain, and ends none.
func (t *telemetry) startSends(ctx context.Context, p *celery.Plan) []trace.Span {
	spans := make([]trace.Span, len(p.Chains))
	prop := t.propagatorOrGlobal()
	inject := len(prop.Fields()) > 0 // none: the global default, a no-op
	for i, ch := range p.Chains {
		first := ch.Tasks[0]
		st := t.sendStart(first.Name)
		sctx, span := t.tracer.Start(ctx, st.name, st.opts...)
		spans[i] = span
		if !inject {
			continue
		}
		carrier := headerCarrier{}
		prop.Inject(sctx, carrier)
		if len(carrier) == 0 {
			continue
		}
		for _, task := range ch.AllTasks() {
			h := make(map[string]any, len(task.Call.Headers)+len(carrier))
			for k, v := range task.Call.Headers {
				h[k] = v
			}
			for k, v := range carrier {
				h[k] = v
			}
			task.Call.Headers = h
		}
	}
	return spans
}

// spanStart is the name and start options of a task's send span.
type spanStart struct {
	name string
	opts []trace.SpanStartOption
}

// sendStart returns the send span's name and options for task, built once
// per task name (up to maxAttrSets of them).
func (t *telemetry) sendStart(task string) spanStart {
	t.attrMu.RLock()
	st, ok := t.starts[task]
	t.attrMu.RUnlock()
	if ok {
		return st
	}
	st = spanStart{name: "send " + task, opts: []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "rabbitmq"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.operation.name", "send"),
			attribute.String("celery.task_name", task),
		),
	}}
	t.attrMu.Lock()
	if t.starts == nil {
		t.starts = make(map[string]spanStart)
	}
	if len(t.starts) < maxAttrSets {
		t.starts[task] = st
	}
	t.attrMu.Unlock()
	return st
}

// sent records a published message on its span and in the metrics.
func (t *telemetry) published(ctx context.Context, span trace.Span, m *celery.Message, r celery.Route, queue string, confirm time.Duration, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return
	}
	if span.IsRecording() {
		dest := r.Exchange
		if dest == "" {
			dest = "amq.default"
		}
		span.SetAttributes(
			attribute.String("messaging.destination.name", dest),
			attribute.String("messaging.rabbitmq.destination.routing_key", r.Key),
			attribute.String("messaging.message.id", m.ID),
			attribute.String("messaging.message.conversation_id", m.CorrelationID),
			attribute.Int("messaging.message.body.size", len(m.Body)),
		)
	}
	t.confirm.Record(ctx, confirm.Seconds())
	t.sent.Add(ctx, 1, t.attrOpt("celery.task_name", m.Name, "messaging.destination.name", queue))
}

// awaitResult, when the send span records, adds a "result <task>" span,
// its child, from the confirm to the final state's arrival: the wait, as
// the trace shows it beside the worker's own span. A FAILURE records the
// Celery exception's type.
func (t *telemetry) awaitResult(span trace.Span, e *result.Entry, name string) {
	if e == nil || !span.IsRecording() {
		return
	}
	ctx := trace.ContextWithSpan(context.Background(), span)
	_, rs := t.tracer.Start(ctx, "result "+name, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "rabbitmq"),
			attribute.String("messaging.operation.type", "receive"),
			attribute.String("messaging.message.id", e.ID()),
			attribute.String("celery.task_name", name)))
	e.Promise().OnSettle(func(m *result.Meta, err error) {
		if err != nil {
			rs.RecordError(err)
			rs.SetStatus(codes.Error, err.Error())
			rs.End()
			return
		}
		rs.SetAttributes(attribute.String("celery.state", string(m.Status)))
		if te := m.Err(); te != nil {
			rs.RecordError(te, trace.WithAttributes(
				attribute.String("exception.type", te.QualifiedType()),
				attribute.String("exception.message", te.Message())))
			rs.SetStatus(codes.Error, te.QualifiedType())
		}
		rs.End(trace.WithTimestamp(m.Received))
	})
}

// finished records a task's final state in the metrics. It runs on the
// consumer loop: recording is an in-memory aggregation, never user code.
func (t *telemetry) finished(e *result.Entry, m *result.Meta) {
	info, ok := e.SendInfo()
	attrs := t.attrOpt("celery.state", string(m.Status), "celery.task_name", info.Name)
	ctx := context.Background()
	t.completed.Add(ctx, 1, attrs)
	if ok && !info.Sent.IsZero() {
		t.duration.Record(ctx, m.Received.Sub(info.Sent).Seconds(), attrs)
	}
}

// revoke wraps a revoke broadcast in a span.
func (t *telemetry) revoke(ctx context.Context, what string, n int, fn func(ctx context.Context) ([]result.ControlReply, error)) ([]result.ControlReply, error) {
	ctx, span := t.tracer.Start(ctx, what, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "rabbitmq"),
			attribute.String("messaging.destination.name", celery.ControlExchange),
			attribute.Int("celery.revoke.count", n)))
	defer span.End()
	replies, err := fn(ctx)
	span.SetAttributes(attribute.Int("celery.revoke.replies", len(replies)))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return replies, err
}
