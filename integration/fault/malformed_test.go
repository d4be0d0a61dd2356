package fault

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

type injected struct {
	name    string
	pub     amqp091.Publishing
	counter string // which Stats counter it must raise
	inLog   string // text the client's log must show for it
}

func jsonMsg(body string) amqp091.Publishing {
	return amqp091.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", Body: []byte(body)}
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	_, _ = w.Write(b)
	_ = w.Close()
	return buf.Bytes()
}

func zlibbed(b []byte) []byte {
	var buf bytes.Buffer
	w := zlib.NewWriter(&buf)
	_, _ = w.Write(b)
	_ = w.Close()
	return buf.Bytes()
}

// TestFaultMalformedMessages injects every class of bad message into a
// live reply queue, between good results. Each is counted and logged; the
// good results and the pending one are unaffected; nothing panics.
func TestFaultMalformedMessages(t *testing.T) {
	const maxBody = 64 << 10
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			logs := &harness.SyncBuffer{}
			c := dial(t, harness.Name("malformed", mode.String()), amqp.WithReplyMode(mode),
				amqp.WithMaxBodySize(maxBody),
				amqp.WithLogger(zerolog.New(logs).Level(zerolog.DebugLevel)))
			ctx := harness.Ctx(t, 90*time.Second)

			// A finished task, and a live one whose queue receives the
			// injected messages.
			done, err := c.Send(ctx, "tasks.add", amqp.Args(20, 1))
			require.NoError(t, err)
			v, err := done.Get(ctx)
			require.NoError(t, err)
			require.Equal(t, int64(21), v)
			// The live task outlasts the test's injections however slow
			// the machine is; the test revokes it at the end.
			live, err := c.Send(ctx, "tasks.slow", amqp.Args(120))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return live.State() == result.Started }, 30*time.Second, 10*time.Millisecond)
			queue := c.ReplyQueue(live.ID())
			L, D := live.ID(), done.ID()
			unknown := uuid.NewString()
			success := func(id string, v any) string {
				return fmt.Sprintf(`{"task_id": %q, "status": "SUCCESS", "result": %v, "traceback": null, "children": []}`, id, v)
			}
			huge := success(L, `"`+strings.Repeat("x", maxBody)+`"`)
			withType := func(ct string, body string) amqp091.Publishing {
				return amqp091.Publishing{ContentType: ct, ContentEncoding: "binary", Body: []byte(body), CorrelationId: L}
			}
			cases := []injected{
				{name: "invalid JSON", pub: jsonMsg(`{"task_id": "` + L + `", "status": "SUC`), counter: "malformed", inLog: "not a JSON object"},
				{name: "wrong shape: array", pub: jsonMsg(`[1, 2, 3]`), counter: "malformed", inLog: "cannot unmarshal array"},
				{name: "wrong shape: string", pub: jsonMsg(`"SUCCESS"`), counter: "malformed", inLog: "cannot unmarshal string"},
				{name: "wrong types: traceback", pub: jsonMsg(`{"task_id": "` + L + `", "status": "SUCCESS", "result": 1, "traceback": 5}`), counter: "malformed", inLog: "traceback is not a string"},
				{name: "wrong types: children", pub: jsonMsg(`{"task_id": "` + L + `", "status": "SUCCESS", "result": 1, "children": {"a": 1}}`), counter: "malformed", inLog: "children is not a list"},
				{name: "missing task_id", pub: jsonMsg(`{"status": "SUCCESS", "result": 1}`), counter: "malformed", inLog: "task_id is missing"},
				{name: "non-string task_id", pub: jsonMsg(`{"task_id": 12345, "status": "SUCCESS", "result": 1}`), counter: "malformed", inLog: "task_id is missing or not a string"},
				{name: "unknown status: number", pub: jsonMsg(`{"task_id": "` + L + `", "status": 42, "result": 1}`), counter: "malformed", inLog: "unknown status 42"},
				{name: "unknown status: not a state name", pub: jsonMsg(`{"task_id": "` + L + `", "status": "no such state!", "result": 1}`), counter: "malformed", inLog: "unknown status"},
				{name: "unknown status: PENDING is never sent", pub: jsonMsg(`{"task_id": "` + L + `", "status": "PENDING", "result": null}`), counter: "malformed", inLog: `unknown status \"PENDING`},
				{name: "over the size limit", pub: jsonMsg(huge), counter: "malformed", inLog: "over the 65536-byte limit"},
				{name: "pickle", pub: withType("application/x-python-serialize", "\x80\x04\x95"), counter: "malformed", inLog: "pickle"},
				{name: "yaml", pub: withType("application/x-yaml", "task_id: "+L+"\nstatus: SUCCESS\nresult: 1\n"), counter: "malformed", inLog: "yaml"},
				{name: "msgpack", pub: withType("application/x-msgpack", "\x85\xa7task_id"), counter: "malformed", inLog: "msgpack"},
				{name: "gzip content_encoding", pub: amqp091.Publishing{ContentType: "application/json", ContentEncoding: "gzip", Body: gzipped([]byte(success(L, 1)))}, counter: "malformed", inLog: "content encoding \\\"gzip\\\""},
				{name: "gzip bytes labelled utf-8", pub: amqp091.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", Body: gzipped([]byte(success(L, 1)))}, counter: "malformed", inLog: "looks compressed"},
				{name: "zlib bytes labelled utf-8", pub: amqp091.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", Body: zlibbed([]byte(success(L, 1)))}, counter: "malformed", inLog: "looks compressed"},
				{name: "id matching no task", pub: amqp091.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", CorrelationId: unknown, Body: []byte(success(unknown, 7))}, counter: "orphans", inLog: "nobody is waiting on"},
				{name: "duplicate terminal state", pub: amqp091.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", CorrelationId: D, Body: []byte(success(D, 999))}, counter: "duplicates", inLog: "duplicate final state ignored"},
				{name: "duplicate terminal state: FAILURE", pub: jsonMsg(`{"task_id": "` + D + `", "status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["late"], "exc_module": "builtins"}, "traceback": "tb", "children": []}`), counter: "duplicates", inLog: "duplicate final state ignored"},
				{name: "late STARTED after SUCCESS", pub: jsonMsg(`{"task_id": "` + D + `", "status": "STARTED", "result": {"pid": 1, "hostname": "late@host"}, "traceback": null, "children": []}`), counter: "stale", inLog: "late state after the final one ignored"},
			}

			ch, err := rawConn(t).Channel()
			require.NoError(t, err)
			require.NoError(t, ch.Confirm(false))
			statsOf := func(s amqp.Stats) map[string]int64 {
				return map[string]int64{"malformed": s.Malformed, "orphans": s.Orphans, "duplicates": s.Duplicates, "stale": s.Stale}
			}
			for i, tc := range cases {
				before := statsOf(c.Stats())
				logFrom := len(logs.String())
				dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, tc.pub)
				require.NoError(t, err, tc.name)
				ok, err := dc.WaitContext(ctx)
				require.NoError(t, err)
				require.True(t, ok, tc.name)
				require.Eventually(t, func() bool { return statsOf(c.Stats())[tc.counter] == before[tc.counter]+1 },
					10*time.Second, 5*time.Millisecond, "%s: %s not counted", tc.name, tc.counter)
				after := statsOf(c.Stats())
				for k := range after {
					if k != tc.counter {
						assert.Equal(t, before[k], after[k], "%s raised %s", tc.name, k)
					}
				}
				// The log lines written since this message was published
				// account for it.
				require.NotEmpty(t, tc.inLog, tc.name)
				logged := logs.String()[logFrom:]
				assert.Contains(t, logged, tc.inLog, tc.name)
				t.Logf("%-40s -> %s", tc.name, tc.counter)

				// A good result right after each bad message.
				r, err := c.Send(ctx, "tasks.add", amqp.Args(i, 1000))
				require.NoError(t, err)
				v, err := r.Get(ctx)
				require.NoError(t, err, "good task after %s", tc.name)
				require.Equal(t, int64(i+1000), v, "good task after %s", tc.name)
			}
			// Malformed messages for the live task name it in the log.
			assert.Contains(t, logs.String(), `"task_id":"`+L+`"`)

			// Nothing touched the live task or the finished one.
			// Every injected SUCCESS for it was refused, so it is still
			// running; its real final state, REVOKED, still comes through.
			assert.Equal(t, result.Started, live.State())
			_, err = live.Revoke(ctx, revoke.Terminate(), revoke.Signal("SIGKILL"))
			require.NoError(t, err)
			_, err = live.Get(ctx)
			require.ErrorIs(t, err, result.ErrRevoked)
			assert.Equal(t, result.Revoked, live.State())
			v, err = done.Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, int64(21), v, "the first final state stands")
			assert.Equal(t, result.Success, done.State())
			// The orphan is kept for a later reader.
			v, err = c.AsyncResult(unknown).Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, int64(7), v)

			st := c.Stats()
			var want = map[string]int64{}
			for _, tc := range cases {
				want[tc.counter]++
			}
			assert.Equal(t, want["malformed"], st.Malformed)
			assert.Equal(t, want["orphans"], st.Orphans)
			assert.Equal(t, want["duplicates"], st.Duplicates)
			assert.Equal(t, want["stale"], st.Stale)
			t.Logf("stats: %+v", st)
		})
	}
}

// TestFaultOrphanFlood pours 100,000 results for unknown ids into a shared
// reply queue: the cache stays at its cap, evictions are counted, memory
// stays bounded, and a real task sent during the flood completes.
func TestFaultOrphanFlood(t *testing.T) {
	const n, capacity = 100_000, 1000
	c := dial(t, harness.Name("flood"), amqp.WithReplyMode(amqp.Shared), amqp.WithResultCache(capacity, time.Hour))
	ctx := harness.Ctx(t, 3*time.Minute)
	queue := c.ReplyQueue("any")

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapBefore := ms.HeapAlloc

	ch, err := rawConn(t).Channel()
	require.NoError(t, err)
	require.NoError(t, ch.Confirm(false))
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, n+1))
	start := time.Now()
	type sent struct {
		r   *result.AsyncResult
		err error
	}
	goodc := make(chan sent, 1)
	for i := range n {
		id := uuid.NewString()
		body := fmt.Sprintf(`{"task_id": %q, "status": "SUCCESS", "result": {"n": %d, "pad": "%s"}, "traceback": null, "children": []}`, id, i, strings.Repeat("p", 64))
		err := ch.PublishWithContext(ctx, "", queue, false, false, amqp091.Publishing{
			ContentType: "application/json", ContentEncoding: "utf-8", CorrelationId: id, Body: []byte(body)})
		require.NoError(t, err)
		if i == n/2 {
			go func() {
				r, err := c.Send(ctx, "tasks.add", amqp.Args(40, 2))
				goodc <- sent{r, err}
			}()
		}
	}
	for range n {
		select {
		case cf := <-confirms:
			require.True(t, cf.Ack)
		case <-ctx.Done():
			t.Fatal("publish confirms")
		}
	}
	published := time.Since(start)
	require.Eventually(t, func() bool { return c.Stats().Orphans >= n }, 2*time.Minute, 20*time.Millisecond)
	consumed := time.Since(start)
	var good sent
	select {
	case good = <-goodc:
	case <-ctx.Done():
		t.Fatal("the real task's Send did not return")
	}
	require.NoError(t, good.err, "the real task was sent during the flood")
	v, err := good.r.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(42), v)

	st := c.Stats()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapAfter := ms.HeapAlloc
	delta := int64(heapAfter) - int64(heapBefore)
	t.Logf("%d orphans published in %s, consumed in %s; stats %+v; heap %d KiB -> %d KiB (%+d KiB)",
		n, published.Round(time.Millisecond), consumed.Round(time.Millisecond), st, heapBefore>>10, heapAfter>>10, delta>>10)
	harness.Measured("TestFaultOrphanFlood: %d orphan results into a shared queue with cache cap %d: cached %d, evicted %d, orphans %d; heap after GC %d KiB → %d KiB (%+d KiB); consumed in %s",
		n, capacity, st.Cached, st.Evicted, st.Orphans, heapBefore>>10, heapAfter>>10, delta>>10, consumed.Round(time.Millisecond))
	assert.Equal(t, int64(n), st.Orphans)
	assert.LessOrEqual(t, st.Cached, capacity)
	assert.GreaterOrEqual(t, st.Evicted, int64(n-capacity))
	assert.Less(t, delta, int64(32<<20), "heap grew by %d bytes", delta)
}
