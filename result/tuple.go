package result

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Result is a node of a task graph: an *AsyncResult or a *GroupResult.
// Celery's children, parents and tuples mix both kinds; code that needs the
// concrete type uses a type switch.
type Result interface {
	// ID is the task id, or the group id.
	ID() string
	// Parent is the previous step of a chain, or nil.
	Parent() *AsyncResult
	// Ready, Successful and Failed never block. For a group they hold for
	// every member (Failed: for any member).
	Ready() bool
	Successful() bool
	Failed() bool
	// Get waits for the value: a task's return value, or a group's values
	// in member order ([]any).
	Get(ctx context.Context, opts ...GetOption) (any, error)
	// Children are the results the task reported creating (subtasks, the
	// next step of a chain, groups), or a group's members.
	Children() []Result
	// AsTuple is Celery's as_tuple form.
	AsTuple() Tuple
	// Forget drops the result locally and in the broker.
	Forget(ctx context.Context) error
	String() string
}

var (
	_ Result = (*AsyncResult)(nil)
	_ Result = (*GroupResult)(nil)
)

// maxTupleDepth bounds the nesting FromTuple accepts (parents and group
// members together), so that hostile input cannot exhaust the stack.
const maxTupleDepth = 4096

// Tuple is Celery's as_tuple form of a result, ((id, parent), nodes):
//
//	task:  [["<id>", <parent tuple or null>], null]
//	group: [["<group id>", <parent tuple or null>], [<member tuple>, ...]]
//
// A chain a|b|c is c's tuple with b as parent and a as b's parent. Its JSON
// encoding is exactly Celery's, so tuples can travel between Python and Go.
type Tuple struct {
	ID     string
	Parent *Tuple
	// Group is true for a group, whose members are in Nodes (possibly
	// none).
	Group bool
	Nodes []Tuple
}

// MarshalJSON writes Celery's nested list form, compact.
func (t Tuple) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	if err := t.write(&b, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func (t Tuple) write(b *bytes.Buffer, depth int) error {
	if depth > maxTupleDepth {
		return fmt.Errorf("stalk: result tuple nested deeper than %d", maxTupleDepth)
	}
	if t.ID == "" {
		return errors.New("stalk: result tuple with an empty id")
	}
	id, _ := json.Marshal(t.ID)
	b.WriteString("[[")
	b.Write(id)
	b.WriteByte(',')
	if t.Parent == nil {
		b.WriteString("null")
	} else if err := t.Parent.write(b, depth+1); err != nil {
		return err
	}
	b.WriteString("],")
	if !t.Group {
		b.WriteString("null]")
		return nil
	}
	b.WriteByte('[')
	for i, n := range t.Nodes {
		if i > 0 {
			b.WriteByte(',')
		}
		if err := n.write(b, depth+1); err != nil {
			return err
		}
	}
	b.WriteString("]]")
	return nil
}

// UnmarshalJSON reads Celery's nested list form, as Python's as_tuple()
// produces it through JSON, or as MarshalJSON writes it.
func (t *Tuple) UnmarshalJSON(data []byte) error {
	v, err := DecodeJSON(data)
	if err != nil {
		return &TupleError{"invalid JSON: " + err.Error()}
	}
	p, err := ParseTuple(v)
	if err != nil {
		return err
	}
	*t = p
	return nil
}

// String returns the JSON form.
func (t Tuple) String() string {
	b, err := t.MarshalJSON()
	if err != nil {
		return "<invalid tuple: " + err.Error() + ">"
	}
	return string(b)
}

// Equal reports whether two tuples describe the same results.
func (t Tuple) Equal(u Tuple) bool {
	if t.ID != u.ID || t.Group != u.Group || len(t.Nodes) != len(u.Nodes) {
		return false
	}
	if (t.Parent == nil) != (u.Parent == nil) {
		return false
	}
	if t.Parent != nil && !t.Parent.Equal(*u.Parent) {
		return false
	}
	for i := range t.Nodes {
		if !t.Nodes[i].Equal(u.Nodes[i]) {
			return false
		}
	}
	return true
}

// TupleError describes input that is not a result tuple. It wraps
// ErrMalformed.
type TupleError struct{ Reason string }

func (e *TupleError) Error() string        { return "stalk: not a result tuple: " + e.Reason }
func (e *TupleError) Is(target error) bool { return target == ErrMalformed }

// ParseTuple reads a tuple from decoded JSON ([]any as DecodeJSON or
// encoding/json produce it). As in Celery, the head may be [id, parent] or
// a bare id string.
func ParseTuple(v any) (Tuple, error) {
	return parseTuple(v, 0)
}

func parseTuple(v any, depth int) (Tuple, error) {
	if depth > maxTupleDepth {
		return Tuple{}, &TupleError{fmt.Sprintf("nested deeper than %d", maxTupleDepth)}
	}
	pair, ok := v.([]any)
	if !ok || len(pair) != 2 {
		return Tuple{}, &TupleError{fmt.Sprintf("want a 2-element list (head, nodes), got %s", describe(v))}
	}
	var t Tuple
	switch head := pair[0].(type) {
	case string:
		t.ID = head
	case []any:
		if len(head) != 2 {
			return Tuple{}, &TupleError{fmt.Sprintf("want a head of 2 elements (id, parent), got %d", len(head))}
		}
		id, ok := head[0].(string)
		if !ok {
			return Tuple{}, &TupleError{fmt.Sprintf("the id is %s, not a string", describe(head[0]))}
		}
		t.ID = id
		if head[1] != nil {
			p, err := parseTuple(head[1], depth+1)
			if err != nil {
				return Tuple{}, err
			}
			t.Parent = &p
		}
	default:
		return Tuple{}, &TupleError{fmt.Sprintf("the head is %s, not [id, parent] or an id", describe(pair[0]))}
	}
	if t.ID == "" {
		return Tuple{}, &TupleError{"empty id"}
	}
	switch nodes := pair[1].(type) {
	case nil:
	case []any:
		t.Group = true
		t.Nodes = make([]Tuple, 0, len(nodes))
		for _, n := range nodes {
			c, err := parseTuple(n, depth+1)
			if err != nil {
				return Tuple{}, err
			}
			t.Nodes = append(t.Nodes, c)
		}
	default:
		return Tuple{}, &TupleError{fmt.Sprintf("the nodes are %s, not a list or null", describe(pair[1]))}
	}
	return t, nil
}

func describe(v any) string {
	switch t := v.(type) {
	case nil:
		return "null"
	case []any:
		return fmt.Sprintf("a list of %d", len(t))
	case string:
		return "a string"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// FromTuple rebuilds the results a tuple describes (Celery's
// result_from_tuple): an *AsyncResult with its parents, or a *GroupResult.
// v may be a Tuple, a *Tuple, JSON ([]byte, json.RawMessage or a string),
// or decoded JSON ([]any). Every result reads through backend; opts apply
// to each AsyncResult created.
//
// Two forms Celery can produce have no rpc-backend equivalent and are
// refused with an error wrapping ErrNotSupported: a group as a member of a
// group, and a group as the parent of a task (a chord's body).
//
// A GroupResult is a ResultSet, so a group tuple that lists one id twice
// (Celery never writes one) gives a group holding that member once, the
// first occurrence, and its AsTuple lists it once.
func FromTuple(v any, backend Backend, opts ...Option) (Result, error) {
	var t Tuple
	switch x := v.(type) {
	case Tuple:
		t = x
	case *Tuple:
		if x == nil {
			return nil, &TupleError{"nil tuple"}
		}
		t = *x
	case []byte:
		if err := t.UnmarshalJSON(x); err != nil {
			return nil, err
		}
	case json.RawMessage:
		if err := t.UnmarshalJSON(x); err != nil {
			return nil, err
		}
	case string:
		if err := t.UnmarshalJSON([]byte(x)); err != nil {
			return nil, err
		}
	default:
		p, err := ParseTuple(v)
		if err != nil {
			return nil, err
		}
		t = p
	}
	return buildFromTuple(t, backend, opts, 0)
}

// AsyncFromTuple is FromTuple for a task's tuple: it fails, with an error
// wrapping ErrMalformed, when v describes a group.
func AsyncFromTuple(v any, backend Backend, opts ...Option) (*AsyncResult, error) {
	r, err := FromTuple(v, backend, opts...)
	if err != nil {
		return nil, err
	}
	ar, ok := r.(*AsyncResult)
	if !ok {
		return nil, &TupleError{"the tuple describes a group, not a task"}
	}
	return ar, nil
}

// GroupFromTuple is FromTuple for a group's tuple: it fails, with an error
// wrapping ErrMalformed, when v describes a task.
func GroupFromTuple(v any, backend Backend, opts ...Option) (*GroupResult, error) {
	r, err := FromTuple(v, backend, opts...)
	if err != nil {
		return nil, err
	}
	g, ok := r.(*GroupResult)
	if !ok {
		return nil, &TupleError{"the tuple describes a task, not a group"}
	}
	return g, nil
}

func buildFromTuple(t Tuple, backend Backend, opts []Option, depth int) (Result, error) {
	if depth > maxTupleDepth {
		return nil, &TupleError{fmt.Sprintf("nested deeper than %d", maxTupleDepth)}
	}
	if t.ID == "" {
		return nil, &TupleError{"empty id"}
	}
	var parent *AsyncResult
	if t.Parent != nil {
		p, err := buildFromTuple(*t.Parent, backend, opts, depth+1)
		if err != nil {
			return nil, err
		}
		ar, ok := p.(*AsyncResult)
		if !ok {
			return nil, fmt.Errorf("stalk: result %s has the group %s as its parent (a chord body): %w", t.ID, p.ID(), ErrNotSupported)
		}
		parent = ar
	}
	if !t.Group {
		o := append(append([]Option(nil), opts...), WithParent(parent))
		return New(t.ID, backend, o...), nil
	}
	members := make([]*AsyncResult, 0, len(t.Nodes))
	for _, n := range t.Nodes {
		m, err := buildFromTuple(n, backend, opts, depth+1)
		if err != nil {
			return nil, err
		}
		ar, ok := m.(*AsyncResult)
		if !ok {
			return nil, fmt.Errorf("stalk: group %s has the group %s as a member: %w", t.ID, m.ID(), ErrNotSupported)
		}
		members = append(members, ar)
	}
	return NewGroupResult(t.ID, parent, members...), nil
}

// AsTuple returns Celery's as_tuple form: ((id, parent tuple), None).
// Marshal it with encoding/json for the JSON form.
func (r *AsyncResult) AsTuple() Tuple {
	t := Tuple{ID: r.id}
	if r.parent != nil {
		p := r.parent.AsTuple()
		t.Parent = &p
	}
	return t
}

// AsList returns the task's id followed by its ancestors' ids, nearest
// first (Celery's as_list): for a chain a|b|c, c's list is [c, b, a].
func (r *AsyncResult) AsList() []string {
	var out []string
	for x := r; x != nil; x = x.parent {
		out = append(out, x.id)
	}
	return out
}

// Root returns the first step of the chain r belongs to: its oldest
// ancestor, or r itself.
func (r *AsyncResult) Root() *AsyncResult {
	x := r
	for x.parent != nil {
		x = x.parent
	}
	return x
}
