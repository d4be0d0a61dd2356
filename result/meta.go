package result

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// DefaultMaxBodySize is the default limit on a result message body.
const DefaultMaxBodySize = 16 << 20

// Meta is one decoded result message: a task's state at one moment.
type Meta struct {
	TaskID    string
	Status    State
	Result    any             // decoded (see DecodeJSON); for exception states the exception dict
	RawResult json.RawMessage // the "result" field exactly as received
	Traceback string
	Children  []any // the raw "children" tuples

	// Fields that only newer Celery versions put in the body; zero when
	// absent.
	DateDone time.Time
	Name     string
	Args     []any
	Kwargs   map[string]any
	Worker   string
	Retries  *int
	Queue    string
	GroupID  string
	ParentID string

	// Transport facts.
	CorrelationID string
	Received      time.Time // when this process received the message
}

// Err returns the *TaskError for an exception state (FAILURE, REVOKED,
// RETRY), and nil otherwise.
func (m *Meta) Err() *TaskError {
	if m == nil || !m.Status.IsException() {
		return nil
	}
	te := &TaskError{TaskID: m.TaskID, State: m.Status, Traceback: m.Traceback, Raw: m.Result}
	if d, ok := m.Result.(map[string]any); ok {
		te.Type, _ = d["exc_type"].(string)
		te.Module, _ = d["exc_module"].(string)
		switch msg := d["exc_message"].(type) {
		case []any:
			te.Args = msg
		case nil:
		default:
			te.Args = []any{msg}
		}
	} else if m.Result != nil {
		te.Args = []any{m.Result}
	}
	if te.Type == "" && m.Status == Revoked {
		te.Type, te.Module = "TaskRevokedError", "celery.exceptions"
	}
	return te
}

// DecodeResult decodes the state's payload into dst with encoding/json:
// the return value after SUCCESS, the meta of a custom state sent with
// update_state (a PROGRESS's {"current": 3, "total": 10} into a struct),
// the exception dict of an exception state. kombu envelopes are turned
// into their Go forms first.
func (m *Meta) DecodeResult(dst any) error { return decodeInto(m, dst) }

// ResultAs decodes m's payload as a T (see Meta.DecodeResult).
func ResultAs[T any](m *Meta) (T, error) {
	var v T
	err := m.DecodeResult(&v)
	return v, err
}

// Worker hostname from a STARTED message's result ({"pid", "hostname"}).
func (m *Meta) startedHostname() string {
	if m.Status != Started {
		return ""
	}
	if d, ok := m.Result.(map[string]any); ok {
		h, _ := d["hostname"].(string)
		return h
	}
	return ""
}

// DecodeOptions limits what DecodeMessage accepts.
type DecodeOptions struct {
	MaxBodySize int // 0 means DefaultMaxBodySize
}

// DecodeMessage checks a result message's content type and encoding and
// decodes its body. Only JSON is accepted: pickle, YAML, msgpack and
// compressed bodies are refused by name, never deserialised. Every error
// wraps ErrMalformed and is a *DecodeError.
func DecodeMessage(contentType, contentEncoding string, body []byte, opts DecodeOptions) (*Meta, error) {
	limit := opts.MaxBodySize
	if limit <= 0 {
		limit = DefaultMaxBodySize
	}
	if len(body) > limit {
		return nil, &DecodeError{Reason: fmt.Sprintf("body of %d bytes is over the %d-byte limit", len(body), limit)}
	}
	if err := CheckContentType(contentType, contentEncoding); err != nil {
		return nil, &DecodeError{Reason: err.Error()}
	}
	return DecodeMeta(body)
}

// CheckContentType accepts JSON in UTF-8 (or with no encoding set) and
// refuses everything else with an error that names what was refused.
func CheckContentType(contentType, contentEncoding string) error {
	ct := strings.ToLower(strings.TrimSpace(contentType))
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = strings.TrimSpace(ct[:i])
	}
	switch ct {
	case "application/json", "":
	case "application/x-python-serialize":
		return fmt.Errorf("refusing content type %q (pickle): stalk never deserialises pickle", contentType)
	case "application/x-yaml", "application/yaml", "text/yaml":
		return fmt.Errorf("refusing content type %q (yaml): only JSON is accepted", contentType)
	case "application/x-msgpack", "application/msgpack":
		return fmt.Errorf("refusing content type %q (msgpack): only JSON is accepted", contentType)
	default:
		return fmt.Errorf("refusing content type %q: only application/json is accepted", contentType)
	}
	enc := strings.ToLower(strings.TrimSpace(contentEncoding))
	switch enc {
	case "", "utf-8", "utf8", "binary":
	default:
		return fmt.Errorf("refusing content encoding %q: compressed or non-UTF-8 bodies are not accepted", contentEncoding)
	}
	return nil
}

type wireMeta struct {
	TaskID    json.RawMessage `json:"task_id"`
	Status    json.RawMessage `json:"status"`
	Result    json.RawMessage `json:"result"`
	Traceback json.RawMessage `json:"traceback"`
	Children  json.RawMessage `json:"children"`
	DateDone  json.RawMessage `json:"date_done"`
	Name      json.RawMessage `json:"name"`
	Args      json.RawMessage `json:"args"`
	Kwargs    json.RawMessage `json:"kwargs"`
	Worker    json.RawMessage `json:"worker"`
	Retries   json.RawMessage `json:"retries"`
	Queue     json.RawMessage `json:"queue"`
	GroupID   json.RawMessage `json:"group_id"`
	ParentID  json.RawMessage `json:"parent_id"`
}

// DecodeMeta decodes the JSON body of a result message as the rpc backend
// publishes it: {"task_id", "status", "result", "traceback", "children"},
// plus the extended fields of newer Celery versions.
func DecodeMeta(body []byte) (*Meta, error) {
	if len(body) > 0 && (body[0] == 0x1f || body[0] == 0x78) {
		return nil, &DecodeError{Reason: "body looks compressed (gzip/zlib); compressed bodies are not accepted"}
	}
	var w wireMeta
	if !scanMeta(body, &w) {
		if err := json.Unmarshal(body, &w); err != nil {
			fixed, ok := replaceNonFinite(body)
			if !ok || json.Unmarshal(fixed, &w) != nil {
				return nil, &DecodeError{Reason: "body is not a JSON object", Err: err}
			}
		}
	}
	m := &Meta{}
	id, ok := optString(w.TaskID)
	if !ok || id == "" {
		return nil, &DecodeError{Reason: "task_id is missing or not a string"}
	}
	m.TaskID = id
	status, ok := wireState(w.Status)
	if !ok || !validWireState(status) {
		return nil, &DecodeError{TaskID: id, Reason: fmt.Sprintf("unknown status %s", quoteRaw(w.Status))}
	}
	m.Status = status
	if len(w.Result) > 0 {
		v, ok := quickJSON(w.Result)
		if !ok {
			var err error
			if v, err = DecodeJSON(w.Result); err != nil {
				return nil, &DecodeError{TaskID: id, Reason: "result is not valid JSON", Err: err}
			}
		}
		m.Result = v
		m.RawResult = append(json.RawMessage(nil), w.Result...)
	} else {
		m.RawResult = json.RawMessage("null")
	}
	if tb, ok := optString(w.Traceback); ok {
		m.Traceback = tb
	} else {
		return nil, &DecodeError{TaskID: id, Reason: "traceback is not a string or null"}
	}
	if string(w.Children) == "[]" {
		m.Children = emptyList
	} else if len(w.Children) > 0 && string(w.Children) != "null" {
		v, err := DecodeJSON(w.Children)
		if err != nil {
			return nil, &DecodeError{TaskID: id, Reason: "children is not valid JSON", Err: err}
		}
		ch, ok := v.([]any)
		if !ok {
			return nil, &DecodeError{TaskID: id, Reason: "children is not a list"}
		}
		m.Children = ch
	}
	// Extended fields: best effort, wrong types are ignored rather than
	// failing a message whose core fields are fine.
	if s, ok := optString(w.DateDone); ok && s != "" {
		if t, err := parseISO(s); err == nil {
			m.DateDone = t
		}
	}
	m.Name, _ = optString(w.Name)
	m.Worker, _ = optString(w.Worker)
	m.Queue, _ = optString(w.Queue)
	m.GroupID, _ = optString(w.GroupID)
	m.ParentID, _ = optString(w.ParentID)
	if len(w.Args) > 0 {
		if v, err := DecodeJSON(w.Args); err == nil {
			m.Args, _ = v.([]any)
		}
	}
	if len(w.Kwargs) > 0 {
		if v, err := DecodeJSON(w.Kwargs); err == nil {
			m.Kwargs, _ = v.(map[string]any)
		}
	}
	if len(w.Retries) > 0 {
		var n int
		if json.Unmarshal(w.Retries, &n) == nil {
			m.Retries = &n
		}
	}
	return m, nil
}

// optString reads a JSON string or null. ok is false for any other type.
func optString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", true
	}
	if s, ok := plainString(raw); ok {
		return s, true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func quoteRaw(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "(missing)"
	}
	if len(raw) > 80 {
		return string(raw[:80]) + "…"
	}
	return string(raw)
}
