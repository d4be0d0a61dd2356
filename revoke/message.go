package revoke

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Wire names, from Celery's pidbox (PROTOCOL.md §1 and §7).
const (
	controlExchange = "celery.pidbox"       // fanout, durable=false
	replyExchange   = "reply.celery.pidbox" // direct, durable=false
	replyQueueTail  = ".reply.celery.pidbox"

	replyQueueExpires = 10000  // x-expires, ms, as Celery
	replyMessageTTL   = 300000 // x-message-ttl, ms, as Celery

	contentType     = "application/json"
	contentEncoding = "utf-8"

	// maxReplyBody bounds one reply message. Inspect replies from a busy
	// worker are a few hundred kB at most.
	maxReplyBody = 16 << 20
)

// request is the body of a control message. Field order is Celery's:
// method, arguments, destination, pattern, matcher, then ticket and
// reply_to only when a reply is wanted.
type request struct {
	Method      string   `json:"method"`
	Arguments   any      `json:"arguments"`
	Destination []string `json:"destination"` // nil encodes as null: every worker
	Pattern     *string  `json:"pattern"`
	Matcher     *string  `json:"matcher"`
	Ticket      string   `json:"ticket,omitempty"`
	ReplyTo     *replyTo `json:"reply_to,omitempty"`
}

type replyTo struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
}

// revokeArgs are revoke's arguments, in Celery's order.
type revokeArgs struct {
	TaskID    any  `json:"task_id"` // one id as a string, several as a list
	Terminate bool `json:"terminate"`
	Signal    any  `json:"signal"` // a name, or a number
}

// stampArgs are revoke_by_stamped_headers' arguments.
type stampArgs struct {
	Headers   orderedStamps `json:"headers"`
	Terminate bool          `json:"terminate"`
	Signal    any           `json:"signal"`
}

// orderedStamps encodes {stamp: value | [values]} with sorted keys; a
// single value goes out as a string, as Python sends it.
type orderedStamps map[string][]string

func (s orderedStamps) MarshalJSON() ([]byte, error) {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		b.Write(kb)
		b.WriteByte(':')
		var vb []byte
		if vs := s[k]; len(vs) == 1 {
			vb, err = json.Marshal(vs[0])
		} else {
			vb, err = json.Marshal(vs)
		}
		if err != nil {
			return nil, err
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// encodeRequest builds the body of a control message. oid and ticket are
// empty when no reply is wanted.
func encodeRequest(method string, args any, destination []string, ticket, oid string) ([]byte, error) {
	if args == nil {
		args = struct{}{}
	}
	req := request{Method: method, Arguments: args}
	if len(destination) > 0 {
		req.Destination = destination
	}
	if ticket != "" {
		req.Ticket = ticket
		req.ReplyTo = &replyTo{Exchange: replyExchange, RoutingKey: oid}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("stalk: %s: encode arguments: %w", method, err)
	}
	return b, nil
}

// requestHeaders are a control message's headers: the Lamport clock, and
// the epoch time after which a reply is useless (0 when no reply is
// wanted, as Celery sends it). Types are ones py-amqp reads back as int and
// float.
func requestHeaders(clock int64, now time.Time, timeout time.Duration) amqp091.Table {
	var expires any = int64(0)
	if timeout > 0 {
		expires = float64(now.Add(timeout).UnixNano()) / 1e9
	}
	return amqp091.Table{"clock": clock, "expires": expires}
}

// errBadReply is wrapped by reply decoding errors.
var errBadReply = errors.New("stalk: undecodable control reply")

// decodeReply decodes a reply body, {"<nodename>": <reply>, ...}, keeping
// the workers in the order they appear. Celery sends one worker per
// message. An {"ok": ...} or {"error": ...} object fills OK or Error;
// Value always holds the whole reply value.
func decodeReply(body []byte) ([]Reply, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadReply, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("%w: body is not a JSON object", errBadReply)
	}
	var out []Reply
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errBadReply, err)
		}
		worker, _ := tok.(string)
		if worker == "" {
			return nil, fmt.Errorf("%w: empty worker name", errBadReply)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: worker %s: %w", errBadReply, worker, err)
		}
		r := Reply{Worker: worker, Value: raw}
		if len(raw) > 0 && raw[0] == '{' {
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(raw, &fields); err == nil {
				r.OK = text(fields["ok"])
				r.Error = text(fields["error"])
				if e, has := fields["error"]; has && r.Error == "" && string(e) != "null" {
					r.Error = "error reply without a message"
				}
			}
		}
		out = append(out, r)
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, fmt.Errorf("%w: %w", errBadReply, err)
	}
	if _, err := dec.Token(); err == nil {
		return nil, fmt.Errorf("%w: data after the reply object", errBadReply)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no worker in the reply", errBadReply)
	}
	return out, nil
}

// text returns a JSON string's value, or the raw JSON of anything else
// that is not null.
func text(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s
	}
	return string(raw)
}

// replyHeaders holds what a reply's headers say.
type replyHeaders struct {
	ticket  string
	clock   int64
	expires float64 // epoch seconds; 0 means never
}

func readReplyHeaders(h amqp091.Table) replyHeaders {
	var r replyHeaders
	switch t := h["ticket"].(type) {
	case string:
		r.ticket = t
	case []byte:
		r.ticket = string(t)
	}
	if n, ok := number(h["clock"]); ok && n > 0 && n < math.MaxInt64 {
		r.clock = int64(n)
	}
	if n, ok := number(h["expires"]); ok && n > 0 && !math.IsInf(n, 0) {
		r.expires = n
	}
	return r
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case int8:
		return float64(n), true
	case int16:
		return float64(n), true
	case int32:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint8:
		return float64(n), true
	case uint16:
		return float64(n), true
	case uint32:
		return float64(n), true
	case uint64:
		return float64(n), true
	case float32:
		return float64(n), true
	case float64:
		if math.IsNaN(n) {
			return 0, false
		}
		return n, true
	}
	return 0, false
}
