package result

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Decimal is a decimal number sent by a kombu 5.3+ worker as
// {"__type__": "decimal", "__value__": "..."}. It keeps the exact digits.
type Decimal string

// Date is a calendar date sent as {"__type__": "date"}.
type Date struct{ time.Time }

// TimeOfDay is a time of day sent as {"__type__": "time"}; Value is the
// ISO text Python sent.
type TimeOfDay string

// Envelope is a kombu {"__type__", "__value__"} value whose type stalk does
// not know. It is kept as received.
type Envelope struct {
	Type  string
	Value any
}

// DecodeJSON decodes Celery JSON into Go values:
//
//   - Python's NaN, Infinity and -Infinity, which Celery's JSON may
//     contain, become float64 NaN and infinities;
//   - objects become map[string]any and arrays []any;
//   - integers become int64, or *big.Int when they do not fit, so no
//     integer is ever rounded through float64; other numbers become
//     float64;
//   - kombu 5.3+ envelopes become time.Time (datetime), Date, TimeOfDay,
//     Decimal, uuid.UUID or []byte (bytes, base64). An unknown __type__ is
//     kept as an Envelope.
//
// The raw JSON stays available to callers that kept it (Meta.RawResult).
func DecodeJSON(data []byte) (any, error) {
	v, err := decodeJSON(data)
	if err != nil {
		if fixed, ok := replaceNonFinite(data); ok {
			if v2, err2 := decodeJSON(fixed); err2 == nil {
				return v2, nil
			}
		}
		return nil, err
	}
	return v, nil
}

func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after JSON value")
	}
	return convert(v), nil
}

func convert(v any) any {
	switch t := v.(type) {
	case json.Number:
		return convertNumber(t)
	case string:
		if f, ok := nonFiniteValue(t); ok {
			return f
		}
		return t
	case []any:
		for i := range t {
			t[i] = convert(t[i])
		}
		return t
	case map[string]any:
		if len(t) == 2 {
			if typ, ok := t["__type__"].(string); ok {
				if raw, ok := t["__value__"]; ok {
					return convertEnvelope(typ, convert(raw))
				}
			}
		}
		for k, x := range t {
			t[k] = convert(x)
		}
		return t
	}
	return v
}

func convertNumber(n json.Number) any {
	s := string(n)
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i
		}
		if b, ok := new(big.Int).SetString(s, 10); ok {
			return b
		}
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return f
	}
	return s
}

func convertEnvelope(typ string, val any) any {
	s, isStr := val.(string)
	switch typ {
	case "datetime":
		if isStr {
			if t, err := parseISO(s); err == nil {
				return t
			}
		}
	case "date":
		if isStr {
			if t, err := time.Parse("2006-01-02", s); err == nil {
				return Date{t}
			}
		}
	case "time":
		if isStr {
			return TimeOfDay(s)
		}
	case "decimal":
		if isStr {
			return Decimal(s)
		}
	case "uuid":
		if isStr {
			if u, err := uuid.Parse(s); err == nil {
				return u
			}
		}
		if m, ok := val.(map[string]any); ok {
			if h, ok := m["hex"].(string); ok {
				if u, err := uuid.Parse(h); err == nil {
					return u
				}
			}
		}
	case "bytes":
		if isStr {
			return []byte(s)
		}
	case "base64":
		if isStr {
			if b, err := base64.StdEncoding.DecodeString(s); err == nil {
				return b
			}
		}
	}
	return Envelope{Type: typ, Value: val}
}

// parseISO parses the ISO-8601 forms Python's isoformat produces, with or
// without an offset (naive values are taken as UTC, as Celery does).
func parseISO(s string) (time.Time, error) {
	layouts := []string{
		time.RFC3339Nano,
		"2006-01-02T15:04:05.999999999",
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999",
	}
	for _, l := range layouts {
		if t, err := time.Parse(l, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("not an ISO-8601 time: %q", s)
}

// ParseTime parses a Celery ISO-8601 timestamp such as a date_done or eta.
func ParseTime(s string) (time.Time, error) { return parseISO(s) }

// toJSONCompatible turns decoded values back into values encoding/json
// writes in the shape Celery sent (used by GetInto).
func toJSONCompatible(v any) any {
	switch t := v.(type) {
	case []any:
		out := make([]any, len(t))
		for i := range t {
			out[i] = toJSONCompatible(t[i])
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[k] = toJSONCompatible(x)
		}
		return out
	case *big.Int:
		return json.Number(t.String())
	case Decimal:
		// Python's Decimal also has NaN, Infinity and sNaN, which JSON
		// numbers cannot carry: keep those as strings.
		if _, err := json.Marshal(json.Number(t)); err == nil {
			return json.Number(string(t))
		}
		return string(t)
	case Date:
		return t.Format("2006-01-02")
	case TimeOfDay:
		return string(t)
	case Envelope:
		return map[string]any{"__type__": t.Type, "__value__": toJSONCompatible(t.Value)}
	}
	return v
}
