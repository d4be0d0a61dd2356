package echoworker

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/integration/harness"
)

func TestRetryRoute(t *testing.T) {
	delayed1 := delayedRoutingKey(1, "qq")
	for _, tc := range []struct {
		cfg       Config
		exchange  string
		key       string
		countdown float64
		want      route
	}{
		// Topic exchange, the fixture's app (default queue "celery").
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic"}, "", "qq", 1, route{exchange: "celery_delayed_27", key: delayed1, delayed: true}},
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic"}, "", "qq", 0.5, route{reject: true}},
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic"}, "", "qq", 0, route{exchange: "qq", key: "qq"}},
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic"}, "qq", "qq", 0.5, route{exchange: "qq", key: "qq"}},
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic"}, "qq", "qq", 5, route{exchange: "qq", key: "qq"}},
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic"}, "celery_delayed_delivery", delayed1, 1, route{exchange: "celery_delayed_delivery", key: delayed1}},
		// The app routes the task to its queue.
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic", DefaultQueue: "qq"}, "qq", "qq", 1.9, route{exchange: "celery_delayed_27", key: delayed1, delayed: true}},
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic", DefaultQueue: "qq"}, "qq", "qq", 0.5, route{reject: true}},
		{Config{Queue: "qq", Exchange: "qq", ExchangeType: "topic", DefaultQueue: "qq", RoutingKey: "a.b"}, "celery_delayed_delivery", "x", 3, route{exchange: "celery_delayed_27", key: delayedRoutingKey(3, "a.b"), delayed: true}},
		// A queue named "celery" is the default queue.
		{Config{Queue: "celery", Exchange: "celery", ExchangeType: "fanout"}, "celery", "celery", 0.5, route{reject: true}},
		// Direct exchanges never use delayed delivery.
		{Config{Queue: "q"}, "", "q", 5, route{exchange: "", key: "q"}},
		{Config{Queue: "q", Exchange: "q", DefaultQueue: "q"}, "q", "q", 5, route{exchange: "q", key: "q"}},
	} {
		cfg := tc.cfg
		cfg.URL = "amqp://x/"
		require.NoError(t, cfg.validate())
		w := &Worker{cfg: cfg}
		got := w.retryRoute(tc.exchange, tc.key, tc.countdown)
		require.Equal(t, tc.want, got, "%+v via %q/%q countdown %v", tc.cfg, tc.exchange, tc.key, tc.countdown)
	}
}

func TestDelayedRoutingKeySame(t *testing.T) {
	for _, n := range []int64{1, 2, 3, 1000, 1<<28 - 1} {
		require.Equal(t, harness.DelayedRoutingKey(n, "rk"), delayedRoutingKey(n, "rk"))
	}
}

func TestETA(t *testing.T) {
	for s, want := range map[string]time.Time{
		"2026-12-02T02:43:42.699366+00:00": time.Date(2026, 12, 2, 2, 43, 42, 699366000, time.UTC),
		"2026-12-02T02:43:42.699366":       time.Date(2026, 12, 2, 2, 43, 42, 699366000, time.UTC),
		"2026-12-02T03:43:42+01:00":        time.Date(2026, 12, 2, 2, 43, 42, 0, time.UTC),
		"2026-12-02 02:43:42Z":             time.Date(2026, 12, 2, 2, 43, 42, 0, time.UTC),
	} {
		got, err := parseETA(s)
		require.NoError(t, err, s)
		require.True(t, want.Equal(got), "%s: %s", s, got)
	}
	_, err := parseETA("soon")
	require.Error(t, err)
	require.Equal(t, "2026-12-02T02:43:42.699366+00:00", FormatETA(time.Date(2026, 12, 2, 2, 43, 42, 699366999, time.UTC)))
	require.Equal(t, "2026-12-02T02:43:42+00:00", FormatETA(time.Date(2026, 12, 2, 3, 43, 42, 0, time.FixedZone("", 3600))))
}

func TestRetryBodyAndHeaders(t *testing.T) {
	require.Equal(t, `{"task_id": "x", "status": "RETRY", "result": {"exc_type": "Retry", "exc_message": ["Retry in 1s"], "exc_module": "celery.exceptions"}, "traceback": null, "children": []}`,
		string(AppendRetryBody(nil, "x", "Retry in 1s")))
	now := time.Date(2026, 12, 2, 2, 43, 42, 0, time.UTC)
	h := retryHeaders(amqp091.Table{"id": "x", "retries": int32(0), "parent_id": nil, "x-death": []any{}, "x-first-death-queue": "q",
		"x-delivery-count": int64(1), "lang": "py"}, "x", 1, 1.5, now)
	require.Equal(t, amqp091.Table{"id": "x", "retries": int32(1), "parent_id": "x", "lang": "py", "eta": "2026-12-02T02:43:43.500000+00:00"}, h)
	h = retryHeaders(amqp091.Table{"parent_id": "p"}, "x", 3, 0, now)
	require.Equal(t, amqp091.Table{"parent_id": "p", "retries": int32(3), "eta": nil}, h)
	times, c, text, ok := retryArgs([]byte(`[[2, 0.5], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`))
	require.True(t, ok)
	require.Equal(t, int64(2), times)
	require.Equal(t, 0.5, c)
	require.Equal(t, "0.5", text)
	_, _, _, ok = retryArgs([]byte(`[[2], {}, {}]`))
	require.False(t, ok)
}

func TestRecorderBounded(t *testing.T) {
	r := newRecorder(3)
	for i := 0; i < 5; i++ {
		r.add(fmt.Sprint(i), Receipt{RoutingKey: fmt.Sprint(i)})
	}
	for i := 0; i < 2; i++ {
		_, ok := r.last(fmt.Sprint(i))
		require.False(t, ok, i)
	}
	for i := 2; i < 5; i++ {
		rc, ok := r.last(fmt.Sprint(i))
		require.True(t, ok, i)
		require.Equal(t, fmt.Sprint(i), rc.RoutingKey)
	}
	for i := 0; i < receiptsPerTask+5; i++ {
		r.add("4", Receipt{Retries: int64(i)})
	}
	all := r.all("4")
	require.Len(t, all, receiptsPerTask)
	require.Equal(t, int64(receiptsPerTask+4), all[len(all)-1].Retries)
	require.Len(t, r.byID, 3)
}

func TestConfigValidate(t *testing.T) {
	c := Config{URL: "amqp://x/", Queue: "q"}
	require.NoError(t, c.validate())
	require.Equal(t, Config{URL: "amqp://x/", Queue: "q", Channels: 4, Prefetch: 256, Name: "echoworker q", RoutingKey: "q", DefaultQueue: "celery"}, c)
	c = Config{URL: "amqp://x/", Queue: "q", Exchange: "e"}
	require.NoError(t, c.validate())
	require.Equal(t, "direct", c.ExchangeType)
	for _, bad := range []Config{
		{URL: "amqp://x/", Queue: "q", QueueType: "stream"},
		{URL: "amqp://x/", Queue: "q", ExchangeType: "topic"},
		{URL: "amqp://x/", Queue: "q", RoutingKey: "k"},
	} {
		require.Error(t, bad.validate(), "%+v", bad)
	}
}
