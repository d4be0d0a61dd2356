package revoke

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/internal/celery"
)

// Wire names, from Celery's pidbox (PROTOCOL.md §1 and §7).
const (
	controlExchange   = celery.ControlExchange
	replyExchange     = celery.ReplyExchange
	replyQueueTail    = celery.ReplyQueueTail
	replyQueueExpires = celery.ReplyQueueExpires
	replyMessageTTL   = celery.ReplyMessageTTL

	contentType     = "application/json"
	contentEncoding = "utf-8"

	// maxReplyBody bounds one reply message. Inspect replies from a busy
	// worker are a few hundred kB at most.
	maxReplyBody = 16 << 20
)

// The request side is Celery's protocol, in internal/celery.
type (
	revokeArgs    = celery.RevokeArgs
	stampArgs     = celery.StampArgs
	orderedStamps = celery.OrderedStamps
)

var encodeRequest = celery.EncodeControl

// requestHeaders are a control message's headers (celery.ControlHeaders)
// as an AMQP table.
func requestHeaders(clock int64, now time.Time, timeout time.Duration) amqp091.Table {
	return amqp091.Table(celery.ControlHeaders(clock, now, timeout))
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
