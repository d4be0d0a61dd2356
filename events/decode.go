package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrContentType is wrapped by the error Decode returns for a message whose
// content type or encoding is not JSON in UTF-8. Such bodies are never
// deserialised: pickle and YAML are refused by name.
var ErrContentType = errors.New("events: refused content type")

// ErrMalformed is wrapped by the error Decode returns for a body, or an
// element of a task.multi array, that is not a valid event.
var ErrMalformed = errors.New("events: malformed event")

// DefaultMaxBodySize is the largest event body decoded by default (Receiver
// option MaxBodySize).
const DefaultMaxBodySize = 8 << 20

// CheckContentType returns nil for content types Celery uses for JSON
// ("application/json", also with parameters) with an empty or UTF-8
// content encoding, and an error wrapping ErrContentType that names the
// refused serializer otherwise.
func CheckContentType(contentType, contentEncoding string) error {
	ct := strings.ToLower(strings.TrimSpace(contentType))
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = strings.TrimSpace(ct[:i])
	}
	if ct != "application/json" && ct != "application/x-json" {
		return fmt.Errorf("%w %q (%s): only JSON events are accepted", ErrContentType, contentType, serializerName(ct))
	}
	switch strings.ToLower(strings.TrimSpace(contentEncoding)) {
	case "", "utf-8", "utf8":
		return nil
	}
	return fmt.Errorf("%w: content encoding %q: JSON events must be utf-8", ErrContentType, contentEncoding)
}

func serializerName(ct string) string {
	switch ct {
	case "application/x-python-serialize":
		return "pickle"
	case "application/x-yaml", "application/yaml", "text/yaml":
		return "yaml"
	case "application/x-msgpack", "application/msgpack":
		return "msgpack"
	case "application/data", "application/octet-stream":
		return "binary"
	case "":
		return "no content type"
	}
	return "unknown serializer"
}

// DecodeMessage checks the content type and encoding, then decodes body
// with Decode.
func DecodeMessage(contentType, contentEncoding string, body []byte) ([]Event, error) {
	if err := CheckContentType(contentType, contentEncoding); err != nil {
		return nil, err
	}
	return Decode(body)
}

// Decode decodes one event body: a JSON object (a single event) or a JSON
// array of objects (a task.multi batch, possibly empty). It never panics.
//
// Elements that are not valid events are skipped; the valid ones are
// returned together with an error wrapping ErrMalformed that describes the
// others (errors.Join of one error per bad element). A body that is not
// JSON at all returns no events and one such error. Use Malformed to count
// the bad elements.
//
// The events alias body (Header.Raw): do not modify body afterwards.
func Decode(body []byte) ([]Event, error) {
	b := bytes.TrimLeft(body, " \t\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrMalformed)
	}
	switch b[0] {
	case '{':
		ev, err := decodeOne(b)
		if err != nil {
			return nil, err
		}
		return []Event{ev}, nil
	case '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(b, &elems); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		out := make([]Event, 0, len(elems))
		var errs []error
		for i, el := range elems {
			ev, err := decodeOne(el)
			if err != nil {
				errs = append(errs, fmt.Errorf("element %d: %w", i, err))
				continue
			}
			out = append(out, ev)
		}
		if len(errs) == 0 {
			return out, nil
		}
		return out, elementErrors(errs)
	}
	return nil, fmt.Errorf("%w: body is neither a JSON object nor an array", ErrMalformed)
}

// elementErrors holds one error per bad element of an array body.
type elementErrors []error

func (e elementErrors) Error() string { return errors.Join(e...).Error() }

func (e elementErrors) Unwrap() []error { return e }

// Malformed returns how many bad bodies or elements err (from Decode or
// DecodeMessage) reports: 0 for nil, otherwise at least 1.
func Malformed(err error) int {
	if err == nil {
		return 0
	}
	var ee elementErrors
	if errors.As(err, &ee) && len(ee) > 0 {
		return len(ee)
	}
	return 1
}

// wireEvent is the union of every event's fields. Fields whose JSON type
// varies between Celery versions are raw.
type wireEvent struct {
	Type      json.RawMessage `json:"type"`
	Hostname  string          `json:"hostname"`
	UTCOffset json.RawMessage `json:"utcoffset"`
	PID       json.RawMessage `json:"pid"`
	Clock     json.RawMessage `json:"clock"`
	Timestamp json.RawMessage `json:"timestamp"`

	UUID       json.RawMessage `json:"uuid"`
	Name       json.RawMessage `json:"name"`
	Args       json.RawMessage `json:"args"`
	Kwargs     json.RawMessage `json:"kwargs"`
	RootID     json.RawMessage `json:"root_id"`
	ParentID   json.RawMessage `json:"parent_id"`
	Retries    json.RawMessage `json:"retries"`
	ETA        json.RawMessage `json:"eta"`
	Expires    json.RawMessage `json:"expires"`
	Queue      json.RawMessage `json:"queue"`
	Exchange   json.RawMessage `json:"exchange"`
	RoutingKey json.RawMessage `json:"routing_key"`
	Result     json.RawMessage `json:"result"`
	Runtime    json.RawMessage `json:"runtime"`
	Exception  json.RawMessage `json:"exception"`
	Traceback  json.RawMessage `json:"traceback"`
	Terminated json.RawMessage `json:"terminated"`
	Signum     json.RawMessage `json:"signum"`
	Expired    json.RawMessage `json:"expired"`
	Requeue    json.RawMessage `json:"requeue"`

	Freq      json.RawMessage `json:"freq"`
	Active    json.RawMessage `json:"active"`
	Processed json.RawMessage `json:"processed"`
	Loadavg   json.RawMessage `json:"loadavg"`
	SWIdent   json.RawMessage `json:"sw_ident"`
	SWVer     json.RawMessage `json:"sw_ver"`
	SWSys     json.RawMessage `json:"sw_sys"`
}

func decodeOne(raw json.RawMessage) (Event, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	var w wireEvent
	if err := json.Unmarshal(raw, &w); err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) || te.Field != "hostname" {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		// A non-string hostname: keep the event, without it.
	}
	typ, ok := str(w.Type)
	if !ok || typ == "" {
		return nil, fmt.Errorf("%w: missing or non-string \"type\"", ErrMalformed)
	}
	ts := num(w.Timestamp)
	h := Header{
		Type:      typ,
		Hostname:  w.Hostname,
		UTCOffset: int(integer(w.UTCOffset)),
		PID:       int(integer(w.PID)),
		Clock:     integer(w.Clock),
		Timestamp: ts,
		Time:      epochTime(ts),
		Raw:       raw,
	}
	uuid, _ := str(w.UUID)
	if IsTask(typ) && uuid == "" {
		return nil, fmt.Errorf("%w: %s event without a \"uuid\"", ErrMalformed, typ)
	}
	switch typ {
	case TypeTaskSent:
		return &TaskSent{Header: h, UUID: uuid, RootID: text(w.RootID), ParentID: text(w.ParentID),
			Name: text(w.Name), Args: text(w.Args), Kwargs: text(w.Kwargs), Retries: int(integer(w.Retries)),
			ETA: text(w.ETA), Expires: text(w.Expires), Queue: text(w.Queue), Exchange: text(w.Exchange),
			RoutingKey: text(w.RoutingKey)}, nil
	case TypeTaskReceived:
		return &TaskReceived{Header: h, UUID: uuid, Name: text(w.Name), Args: text(w.Args), Kwargs: text(w.Kwargs),
			RootID: text(w.RootID), ParentID: text(w.ParentID), Retries: int(integer(w.Retries)),
			ETA: text(w.ETA), Expires: text(w.Expires)}, nil
	case TypeTaskStarted:
		return &TaskStarted{Header: h, UUID: uuid}, nil
	case TypeTaskSucceeded:
		rt := num(w.Runtime)
		return &TaskSucceeded{Header: h, UUID: uuid, Result: text(w.Result), RuntimeSeconds: rt,
			Runtime: secondsToDuration(rt)}, nil
	case TypeTaskFailed:
		return &TaskFailed{Header: h, UUID: uuid, Exception: text(w.Exception), Traceback: text(w.Traceback)}, nil
	case TypeTaskRetried:
		return &TaskRetried{Header: h, UUID: uuid, Exception: text(w.Exception), Traceback: text(w.Traceback)}, nil
	case TypeTaskRevoked:
		return &TaskRevoked{Header: h, UUID: uuid, Terminated: boolean(w.Terminated), Signum: text(w.Signum),
			Expired: boolean(w.Expired)}, nil
	case TypeTaskRejected:
		return &TaskRejected{Header: h, UUID: uuid, Requeue: boolean(w.Requeue)}, nil
	case TypeWorkerOnline:
		return &WorkerOnline{Header: h, WorkerInfo: workerInfo(&w)}, nil
	case TypeWorkerHeartbeat:
		return &WorkerHeartbeat{Header: h, WorkerInfo: workerInfo(&w)}, nil
	case TypeWorkerOffline:
		return &WorkerOffline{Header: h, WorkerInfo: workerInfo(&w)}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var fields map[string]any
	if err := dec.Decode(&fields); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return &Unknown{Header: h, UUID: uuid, Fields: fields}, nil
}

func workerInfo(w *wireEvent) WorkerInfo {
	wi := WorkerInfo{
		Freq:      num(w.Freq),
		Active:    int(integer(w.Active)),
		Processed: int(integer(w.Processed)),
		SWIdent:   text(w.SWIdent),
		SWVer:     text(w.SWVer),
		SWSys:     text(w.SWSys),
	}
	var la []json.RawMessage
	if len(w.Loadavg) > 0 && json.Unmarshal(w.Loadavg, &la) == nil {
		wi.Loadavg = make([]float64, len(la))
		for i, v := range la {
			wi.Loadavg[i] = num(v)
		}
	}
	return wi
}

// str returns a JSON string's value.
func str(r json.RawMessage) (string, bool) {
	if len(r) == 0 || r[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(r, &s) != nil {
		return "", false
	}
	return s, true
}

// text returns a JSON string's value, "" for null or absent, and the JSON
// text itself for any other value (a newer sender's list of args, say), so
// that nothing is lost.
func text(r json.RawMessage) string {
	if len(r) == 0 || string(r) == "null" {
		return ""
	}
	if s, ok := str(r); ok {
		return s
	}
	return string(r)
}

// num returns a JSON number as a float64, or 0.
func num(r json.RawMessage) float64 {
	if len(r) == 0 || (r[0] != '-' && (r[0] < '0' || r[0] > '9')) {
		return 0
	}
	f, err := strconv.ParseFloat(string(r), 64)
	if err != nil {
		return 0
	}
	return f
}

// integer returns a JSON number as an int64 (truncating a fraction), or 0.
func integer(r json.RawMessage) int64 {
	if len(r) == 0 {
		return 0
	}
	if n, err := strconv.ParseInt(string(r), 10, 64); err == nil {
		return n
	}
	f := num(r)
	if f >= -9.2e18 && f <= 9.2e18 {
		return int64(f)
	}
	return 0
}

func boolean(r json.RawMessage) bool { return string(r) == "true" }
