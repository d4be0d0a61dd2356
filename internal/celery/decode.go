package celery

import (
	"encoding/json"
	"fmt"

	"github.com/stalk-dev/stalk/result"
)

// TaskMessage is a decoded Celery protocol v2 task message, as a worker
// reads it. Go programs that consume tasks (test workers, proxies, audit
// tools) can use DecodeTask to read what stalk or Python published.
type TaskMessage struct {
	ID        string
	Task      string
	Args      []any
	Kwargs    map[string]any
	Embed     map[string]any
	Retries   int
	Stamps    map[string]any // the stamps header, by stamped header name
	ETA       string
	Expires   string
	RootID    string
	ParentID  string
	GroupID   string
	Headers   map[string]any
	RawArgs   json.RawMessage
	RawKwargs json.RawMessage
}

// DecodeTask decodes a protocol v2 task message. Only JSON bodies are
// accepted; the headers must carry "task" and "id", and the body must be
// the 3-element array [args, kwargs, embed]. Errors wrap
// result.ErrMalformed.
func DecodeTask(headers map[string]any, contentType, contentEncoding string, body []byte) (*TaskMessage, error) {
	bad := func(format string, a ...any) error {
		return &result.DecodeError{Reason: fmt.Sprintf(format, a...)}
	}
	if err := result.CheckContentType(contentType, contentEncoding); err != nil {
		return nil, &result.DecodeError{Reason: err.Error()}
	}
	task, _ := headers["task"].(string)
	id, _ := headers["id"].(string)
	if task == "" {
		return nil, bad("task header missing or not a string (not protocol v2)")
	}
	if id == "" {
		return nil, bad("id header missing or not a string")
	}
	var parts []json.RawMessage
	if err := json.Unmarshal(body, &parts); err != nil {
		return nil, &result.DecodeError{TaskID: id, Reason: "body is not a JSON array", Err: err}
	}
	if len(parts) != 3 {
		return nil, &result.DecodeError{TaskID: id, Reason: fmt.Sprintf("body has %d elements, want [args, kwargs, embed]", len(parts))}
	}
	tm := &TaskMessage{ID: id, Task: task, Headers: headers, RawArgs: parts[0], RawKwargs: parts[1]}
	args, err := result.DecodeJSON(parts[0])
	if err != nil {
		return nil, &result.DecodeError{TaskID: id, Reason: "args", Err: err}
	}
	var ok bool
	if tm.Args, ok = args.([]any); !ok {
		return nil, &result.DecodeError{TaskID: id, Reason: "args is not a list"}
	}
	kwargs, err := result.DecodeJSON(parts[1])
	if err != nil {
		return nil, &result.DecodeError{TaskID: id, Reason: "kwargs", Err: err}
	}
	if tm.Kwargs, ok = kwargs.(map[string]any); !ok {
		return nil, &result.DecodeError{TaskID: id, Reason: "kwargs is not an object"}
	}
	embed, err := result.DecodeJSON(parts[2])
	if err != nil {
		return nil, &result.DecodeError{TaskID: id, Reason: "embed", Err: err}
	}
	if embed != nil {
		if tm.Embed, ok = embed.(map[string]any); !ok {
			return nil, &result.DecodeError{TaskID: id, Reason: "embed is not an object"}
		}
	}
	switch r := headers["retries"].(type) {
	case int32:
		tm.Retries = int(r)
	case int64:
		tm.Retries = int(r)
	case int16:
		tm.Retries = int(r)
	case int8:
		tm.Retries = int(r)
	case nil:
	default:
		return nil, &result.DecodeError{TaskID: id, Reason: fmt.Sprintf("retries header has type %T", r)}
	}
	tm.ETA, _ = headers["eta"].(string)
	tm.Expires, _ = headers["expires"].(string)
	tm.RootID, _ = headers["root_id"].(string)
	tm.ParentID, _ = headers["parent_id"].(string)
	tm.GroupID, _ = headers["group"].(string)
	if st, ok := headers["stamps"].(map[string]any); ok && len(st) > 0 {
		tm.Stamps = st
	}
	return tm, nil
}
