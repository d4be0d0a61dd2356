package otel

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

func collect(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		assert.Equal(t, "github.com/stalk-dev/stalk", sm.Scope.Name)
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

func attrs(set attribute.Set) map[string]string {
	out := map[string]string{}
	for _, kv := range set.ToSlice() {
		out[string(kv.Key)] = kv.Value.String()
	}
	return out
}

// stalk's metrics, read through the SDK's manual reader after real tasks:
// sent by task and queue, final states by state, the time from send to
// final state, publish confirms, pending results, connection state and
// reconnects; no task id in any attribute.
func TestMetrics(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	name := harness.Name("otel-metrics")
	c := dial(t, amqp.WithMeterProvider(mp), amqp.WithConnectionName(name), amqp.WithReplyMode(amqp.Shared))
	for i := range 3 {
		r, err := c.Send(ctx, "tasks.add", amqp.Args(i, i))
		require.NoError(t, err)
		_, err = r.Get(ctx)
		require.NoError(t, err)
	}
	r, err := c.Send(ctx, "tasks.boom", amqp.Args("x"))
	require.NoError(t, err)
	_, err = r.Get(ctx)
	require.Error(t, err)
	harness.CloseConnection(t, name+"-results")
	require.Eventually(t, func() bool { return c.Stats().Reconnects == 1 && c.State() == amqp.Ready }, 20*time.Second, 10*time.Millisecond)

	m := collect(t, reader)
	sent := m["stalk.tasks.sent"].(metricdata.Sum[int64])
	byTask := map[string]int64{}
	for _, dp := range sent.DataPoints {
		a := attrs(dp.Attributes)
		assert.Equal(t, queue, a["messaging.destination.name"])
		byTask[a["celery.task_name"]] += dp.Value
	}
	assert.Equal(t, map[string]int64{"tasks.add": 3, "tasks.boom": 1}, byTask)

	done := m["stalk.tasks.completed"].(metricdata.Sum[int64])
	byState := map[string]int64{}
	for _, dp := range done.DataPoints {
		byState[attrs(dp.Attributes)["celery.state"]] += dp.Value
	}
	assert.Equal(t, map[string]int64{"SUCCESS": 3, "FAILURE": 1}, byState)

	var n uint64
	for _, dp := range m["stalk.task.duration"].(metricdata.Histogram[float64]).DataPoints {
		n += dp.Count
		assert.Positive(t, dp.Sum)
	}
	assert.EqualValues(t, 4, n, "one duration per final state")
	var confirms uint64
	for _, dp := range m["stalk.publish.duration"].(metricdata.Histogram[float64]).DataPoints {
		confirms += dp.Count
	}
	assert.EqualValues(t, 4, confirms)

	pending := m["stalk.results.pending"].(metricdata.Gauge[int64])
	require.Len(t, pending.DataPoints, 1)
	assert.Zero(t, pending.DataPoints[0].Value)
	for _, dp := range m["stalk.connection.ready"].(metricdata.Gauge[int64]).DataPoints {
		assert.Equal(t, int64(1), dp.Value, "%v", attrs(dp.Attributes))
	}
	reconnects := map[string]int64{}
	for _, dp := range m["stalk.connection.reconnects"].(metricdata.Sum[int64]).DataPoints {
		reconnects[attrs(dp.Attributes)["stalk.connection"]] = dp.Value
	}
	assert.Equal(t, map[string]int64{"results": 1, "publish": 0}, reconnects)
	outcomes := map[string]int64{}
	for _, dp := range m["stalk.result.messages"].(metricdata.Sum[int64]).DataPoints {
		outcomes[attrs(dp.Attributes)["stalk.outcome"]] = dp.Value
	}
	assert.GreaterOrEqual(t, outcomes["received"], int64(4))
	for _, k := range []string{"malformed", "orphan", "duplicate", "stale"} {
		assert.Contains(t, outcomes, k)
	}
	j, err := json.Marshal(m)
	require.NoError(t, err)
	assert.NotContains(t, string(j), r.ID(), "no task id in metric attributes")
}

// A failed task's result span records the Celery exception's type; a
// revoke is a span of its own.
func TestResultAndRevokeSpans(t *testing.T) {
	ctx := harness.Ctx(t, time.Minute)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	c := dial(t, amqp.WithTracerProvider(tp))
	r, err := c.Send(ctx, "tasks.custom_fail", amqp.Args("E42", "detail"))
	require.NoError(t, err)
	_, err = r.Get(ctx)
	var te *result.TaskError
	require.ErrorAs(t, err, &te)
	var send, res *tracetest.SpanStub
	require.Eventually(t, func() bool {
		for _, s := range exp.GetSpans() {
			switch s.Name {
			case "send tasks.custom_fail":
				send = &s
			case "result tasks.custom_fail":
				res = &s
			}
		}
		return send != nil && res != nil
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, send.SpanContext.SpanID(), res.Parent.SpanID())
	assert.Equal(t, codes.Error, res.Status.Code)
	assert.Equal(t, te.QualifiedType(), res.Status.Description)
	assert.Contains(t, res.Attributes, attribute.String("celery.state", "FAILURE"))
	require.NotEmpty(t, res.Events)
	assert.Contains(t, res.Events[0].Attributes, attribute.String("exception.type", "tasks.CustomError"))
	assert.Contains(t, send.Attributes, attribute.String("messaging.message.id", r.ID()))
	assert.Contains(t, send.Attributes, attribute.String("messaging.destination.name", "amq.default"))
	assert.Contains(t, send.Attributes, attribute.String("messaging.rabbitmq.destination.routing_key", queue))

	_, err = c.AsyncResult(r.ID()).Revoke(ctx, revoke.Wait(time.Second))
	require.NoError(t, err)
	var rv *tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.Name == "revoke" {
			rv = &s
		}
	}
	require.NotNil(t, rv, "a revoke span")
	assert.Contains(t, rv.Attributes, attribute.String("messaging.destination.name", "celery.pidbox"))
	assert.Contains(t, rv.Attributes, attribute.Int("celery.revoke.count", 1))
}
