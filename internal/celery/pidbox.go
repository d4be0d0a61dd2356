package celery

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// Celery's remote control (pidbox): a broadcast on the celery.pidbox
// fanout exchange, replies on reply.celery.pidbox.

// Wire names, from Celery's pidbox (PROTOCOL.md §1 and §7).
const (
	ControlExchange = "celery.pidbox"       // fanout, durable=false
	ReplyExchange   = "reply.celery.pidbox" // direct, durable=false
	ReplyQueueTail  = ".reply.celery.pidbox"

	ReplyQueueExpires = 10000  // x-expires, ms, as Celery
	ReplyMessageTTL   = 300000 // x-message-ttl, ms, as Celery

)

// controlRequest is the body of a control message. Field order is Celery's:
// method, arguments, destination, pattern, matcher, then ticket and
// reply_to only when a reply is wanted.
type controlRequest struct {
	Method      string          `json:"method"`
	Arguments   any             `json:"arguments"`
	Destination []string        `json:"destination"` // nil encodes as null: every worker
	Pattern     *string         `json:"pattern"`
	Matcher     *string         `json:"matcher"`
	Ticket      string          `json:"ticket,omitempty"`
	ReplyTo     *controlReplyTo `json:"reply_to,omitempty"`
}

type controlReplyTo struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
}

// RevokeArgs are revoke's arguments, in Celery's order.
type RevokeArgs struct {
	TaskID    any  `json:"task_id"` // one id as a string, several as a list
	Terminate bool `json:"terminate"`
	Signal    any  `json:"signal"` // a name, or a number
}

// StampArgs are revoke_by_stamped_headers' arguments.
type StampArgs struct {
	Headers   OrderedStamps `json:"headers"`
	Terminate bool          `json:"terminate"`
	Signal    any           `json:"signal"`
}

// OrderedStamps encodes {stamp: value | [values]} with sorted keys; a
// single value goes out as a string, as Python sends it.
type OrderedStamps map[string][]string

func (s OrderedStamps) MarshalJSON() ([]byte, error) {
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

// EncodeControl builds the body of a control message. oid and ticket are
// empty when no reply is wanted.
func EncodeControl(method string, args any, destination []string, ticket, oid string) ([]byte, error) {
	if args == nil {
		args = struct{}{}
	}
	req := controlRequest{Method: method, Arguments: args}
	if len(destination) > 0 {
		req.Destination = destination
	}
	if ticket != "" {
		req.Ticket = ticket
		req.ReplyTo = &controlReplyTo{Exchange: ReplyExchange, RoutingKey: oid}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("%s: encode arguments: %w", method, err)
	}
	return b, nil
}

// ControlHeaders are a control message's headers: the Lamport clock, and
// the epoch time after which a reply is useless (0 when no reply is
// wanted, as Celery sends it). Types are ones py-amqp reads back as int and
// float.
func ControlHeaders(clock int64, now time.Time, timeout time.Duration) map[string]any {
	var expires any = int64(0)
	if timeout > 0 {
		expires = float64(now.Add(timeout).UnixNano()) / 1e9
	}
	return map[string]any{"clock": clock, "expires": expires}
}
