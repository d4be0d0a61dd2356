package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// topologyBroker skips t unless the broker answers (fails it when
// STALK_REQUIRE_BROKER=1), and holds the shared broker lock until t ends,
// as Main does for whole suites.
func topologyBroker(t *testing.T) {
	t.Helper()
	if err := Reachable(5 * time.Second); err != nil {
		if os.Getenv("STALK_REQUIRE_BROKER") == "1" {
			t.Fatalf("RabbitMQ at %s is not reachable and STALK_REQUIRE_BROKER=1: %v", redact(BrokerURL()), err)
		}
		t.Skipf("RabbitMQ at %s is not reachable: %v", redact(BrokerURL()), err)
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("broker lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		t.Fatalf("broker lock: %v", err)
	}
	t.Cleanup(func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}

// cleanupDelayed deletes the delayed topology at the end of t, but only
// when STALK_DELETE_DELAYED=1: other packages' tests may be using it.
func cleanupDelayed(t *testing.T) {
	t.Cleanup(func() {
		if os.Getenv("STALK_DELETE_DELAYED") != "1" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := DeleteDelayedDelivery(ctx, BrokerURL()); err != nil {
			t.Logf("delete delayed delivery: %v", err)
		}
	})
}

func TestDelayedRoutingKey(t *testing.T) {
	if got, want := DelayedRoutingKey(3, "cl56-qq2"), "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1.cl56-qq2"; got != want {
		t.Fatalf("DelayedRoutingKey(3) = %q, want %q", got, want)
	}
	if got := delayedBindingKey(27, "1"); got != "1.#" {
		t.Fatalf("level 27 key %q", got)
	}
	if got := delayedBindingKey(0, "0"); got != strings.Repeat("*.", 27)+"0.#" {
		t.Fatalf("level 0 key %q", got)
	}
}

// rabbitmqctlJSON runs rabbitmqctl --formatter json and decodes its
// stdout (warnings on stderr are left out).
func rabbitmqctlJSON(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	cmd := exec.Command("rabbitmqctl", append([]string{"--formatter", "json", "-q"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, stderr.String())
	}
	var rows []map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	if err := dec.Decode(&rows); err != nil {
		t.Fatalf("rabbitmqctl %v: decode: %v\n%.2000s", args, err, out)
	}
	return rows
}

// cell renders one rabbitmqctl JSON value as the text formatter prints it.
// "exclusive" is a string ("") for quorum queues on 3.10, a bool otherwise.
func cell(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case bool:
		if v {
			return "true"
		}
		return "false"
	case string:
		return v
	case json.Number:
		return v.String()
	default:
		return fmt.Sprint(v)
	}
}

// argsCell renders an arguments list, [[key, type, value], …] in JSON, as
// [{"key",value},…] with its entries sorted: amqp091-go writes a table in
// Go's map order, so only the set of arguments can match Python's.
func argsCell(t *testing.T, v any) string {
	t.Helper()
	list, _ := v.([]any)
	entries := make([]string, 0, len(list))
	for _, a := range list {
		triple, ok := a.([]any)
		if !ok || len(triple) != 3 {
			t.Fatalf("unexpected argument %v", a)
		}
		val := cell(triple[2])
		if _, isString := triple[2].(string); isString {
			val = `"` + val + `"`
		}
		entries = append(entries, fmt.Sprintf(`{"%s",%s}`, cell(triple[0]), val))
	}
	return sortedArgs(entries)
}

func sortedArgs(entries []string) string {
	sort.Strings(entries)
	return "[" + strings.Join(entries, ",") + "]"
}

// normalizeFixtureLine sorts the entries of the last column when it is a
// non-empty argument list.
func normalizeFixtureLine(line string) string {
	cols := strings.Split(line, "\t")
	last := cols[len(cols)-1]
	if strings.HasPrefix(last, "[{") && strings.HasSuffix(last, "}]") {
		inner := strings.Split(last[2:len(last)-2], "},{")
		for i, e := range inner {
			inner[i] = "{" + e + "}"
		}
		cols[len(cols)-1] = sortedArgs(inner)
	}
	return strings.Join(cols, "\t")
}

// fixtureSections reads testdata/topology-quorum-topic.txt (a copy of
// /work/shared/fixtures/celery-5.6.3/) as its three sections, each with
// its queue "fxq" renamed to queue.
func fixtureSections(t *testing.T, queue string) [3][]string {
	t.Helper()
	b, err := os.ReadFile("testdata/topology-quorum-topic.txt")
	if err != nil {
		t.Fatal(err)
	}
	var secs [3][]string
	i := -1
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.HasPrefix(line, "# rabbitmqctl") {
			i++
			continue
		}
		if i < 0 || i > 2 {
			t.Fatalf("fixture: unexpected line %q", line)
		}
		secs[i] = append(secs[i], normalizeFixtureLine(strings.ReplaceAll(line, "fxq", queue)))
	}
	for i := range secs {
		sort.Strings(secs[i])
	}
	return secs
}

func compareLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	sort.Strings(got)
	n := max(len(got), len(want))
	bad := 0
	for i := 0; i < n; i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			bad++
			if bad <= 10 {
				t.Errorf("%s line %d:\n got  %q\n want %q", what, i+1, g, w)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d lines differ (got %d lines, want %d)", what, bad, n, len(got), len(want))
	}
}

// TestDelayedDeliveryMatchesCelery declares the delayed topology and a
// quorum queue on a topic exchange, as in the fixture, twice (the second
// time must change nothing), and compares what rabbitmqctl lists with what
// a Celery 5.6.3 worker declared.
func TestDelayedDeliveryMatchesCelery(t *testing.T) {
	topologyBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := Name("topo")
	q := CeleryQueue{Name: name, ExchangeType: "topic", Quorum: true}
	t.Cleanup(func() {
		if err := DeleteCeleryQueue(context.Background(), BrokerURL(), q); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	cleanupDelayed(t)
	for i := 0; i < 2; i++ {
		if err := DeclareDelayedDelivery(ctx, BrokerURL(), q); err != nil {
			t.Fatalf("declare #%d: %v", i+1, err)
		}
	}

	mine := func(n string) bool { return n == name || strings.HasPrefix(n, "celery_delayed_") }
	want := fixtureSections(t, name)

	var queues []string
	for _, r := range rabbitmqctlJSON(t, "list_queues", "name", "type", "durable", "auto_delete", "exclusive", "arguments") {
		if n := cell(r["name"]); mine(n) {
			queues = append(queues, strings.Join([]string{n, cell(r["type"]), cell(r["durable"]),
				cell(r["auto_delete"]), cell(r["exclusive"]), argsCell(t, r["arguments"])}, "\t"))
		}
	}
	compareLines(t, "list_queues", queues, want[0])

	var exchanges []string
	for _, r := range rabbitmqctlJSON(t, "list_exchanges", "name", "type", "durable", "auto_delete", "arguments") {
		if n := cell(r["name"]); mine(n) {
			exchanges = append(exchanges, strings.Join([]string{n, cell(r["type"]), cell(r["durable"]),
				cell(r["auto_delete"]), argsCell(t, r["arguments"])}, "\t"))
		}
	}
	compareLines(t, "list_exchanges", exchanges, want[1])

	var bindings []string
	for _, r := range rabbitmqctlJSON(t, "list_bindings", "source_name", "destination_name", "destination_kind", "routing_key", "arguments") {
		src, dst := cell(r["source_name"]), cell(r["destination_name"])
		if (src == "" || mine(src)) && mine(dst) {
			bindings = append(bindings, strings.Join([]string{src, dst, cell(r["destination_kind"]),
				cell(r["routing_key"]), argsCell(t, r["arguments"])}, "\t"))
		}
	}
	compareLines(t, "list_bindings", bindings, want[2])
}

// TestDelayedDeliveryDelays publishes a message delayed by 2 s to a quorum
// queue on a topic exchange, as Python's send_task does, and times its
// arrival.
func TestDelayedDeliveryDelays(t *testing.T) {
	topologyBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := Name("topo-delay")
	q := CeleryQueue{Name: name, ExchangeType: "topic", Quorum: true}
	t.Cleanup(func() {
		if err := DeleteCeleryQueue(context.Background(), BrokerURL(), q); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	cleanupDelayed(t)
	if err := DeclareDelayedDelivery(ctx, BrokerURL(), q); err != nil {
		t.Fatal(err)
	}

	conn, err := amqp091.Dial(BrokerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	d, err := ch.Consume(name, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	key := DelayedRoutingKey(2, name)
	start := time.Now()
	conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, DelayedEntryExchange, key, false, false, amqp091.Publishing{
		DeliveryMode: amqp091.Persistent, Body: []byte("delayed"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := conf.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("publish not confirmed: %v %v", ok, err)
	}
	select {
	case m := <-d:
		took := time.Since(start)
		t.Logf("arrived after %s through exchange %q, key %q", took, m.Exchange, m.RoutingKey)
		_ = m.Ack(false)
		if string(m.Body) != "delayed" || m.RoutingKey != key {
			t.Errorf("got %q with key %q", m.Body, m.RoutingKey)
		}
		if took < 1900*time.Millisecond || took > 4*time.Second {
			t.Errorf("arrived after %s, want 1.9 s to 4 s", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the delayed message did not arrive within 10 s")
	}
}
