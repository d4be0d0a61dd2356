package amqp

import (
	"strconv"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stalk-dev/stalk/result"
)

// benchIDs returns n task ids shaped like Celery's (uuid4 strings).
func benchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		s := strconv.Itoa(i)
		ids[i] = "00000000-0000-4000-8000-" + "000000000000"[len(s):] + s
	}
	return ids
}

// BenchmarkRegistryRoutePending looks up the entry of a result among
// 100,000 pending ones: the consumer's lookup for every message.
func BenchmarkRegistryRoutePending(b *testing.B) {
	r := newRegistry(10000, defaultConfig().cacheTTL)
	ids := benchIDs(100000)
	for _, id := range ids {
		r.register(result.NewEntry(id))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, known, _ := r.route(ids[i%len(ids)]); !known {
			b.Fatal("pending id not found")
		}
		i++
	}
}

// BenchmarkRegistryRouteOrphan routes results for ids nobody asked for:
// each one becomes a cache entry, and the bounded cache evicts the oldest.
func BenchmarkRegistryRouteOrphan(b *testing.B) {
	r := newRegistry(10000, defaultConfig().cacheTTL)
	ids := benchIDs(1 << 16)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r.route(ids[i%len(ids)])
		i++
	}
}

// BenchmarkRegistryLifecycle is the registry's whole share of one round
// trip with 100,000 other results pending: register at Send, route the
// result, move the settled entry to the cache.
func BenchmarkRegistryLifecycle(b *testing.B) {
	r := newRegistry(10000, defaultConfig().cacheTTL)
	for _, id := range benchIDs(100000) {
		r.register(result.NewEntry("p" + id))
	}
	ids := benchIDs(1 << 16)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id := ids[i%len(ids)]
		r.register(result.NewEntry(id))
		e, _, _ := r.route(id)
		r.settled(id, e, nil)
		i++
	}
}

// BenchmarkConsumerHandleShared is the consumer loop's work for one SUCCESS
// message in shared mode, with 100,000 other results pending: decode, look
// up, record, settle the promise, move the entry to the cache. (The ack
// fails fast here: the delivery has no channel.)
func BenchmarkConsumerHandleShared(b *testing.B) {
	cfg := defaultConfig()
	cfg.mode, cfg.replyQueue = Shared, "bench"
	c := newConsumer(&cfg, zerolog.Nop())
	for _, id := range benchIDs(100000) {
		c.reg.register(result.NewEntry("p" + id))
	}
	ids := benchIDs(1 << 16)
	bodies := make([][]byte, len(ids))
	for i, id := range ids {
		bodies[i] = []byte(`{"task_id": "` + id + `", "status": "SUCCESS", "result": 5, "traceback": null, "children": []}`)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := i % len(ids)
		e := result.NewEntry(ids[k])
		c.reg.register(e)
		c.handle(inbound{d: amqp091.Delivery{
			ContentType: "application/json", ContentEncoding: "utf-8",
			CorrelationId: ids[k], Body: bodies[k],
		}})
		if !e.Promise().Settled() {
			b.Fatal("not settled")
		}
		i++
	}
}
