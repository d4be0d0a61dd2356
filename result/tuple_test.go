package result

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeBackend hands out one entry per id; tests deliver states to them.
type fakeBackend struct {
	mu       sync.Mutex
	entries  map[string]*Entry
	forgot   []string
	attaches int
}

func newFake() *fakeBackend { return &fakeBackend{entries: map[string]*Entry{}} }

func (f *fakeBackend) Attach(id string) *Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attaches++
	if e := f.entries[id]; e != nil {
		return e
	}
	e := NewEntry(id)
	f.entries[id] = e
	return e
}

func (f *fakeBackend) Exists(context.Context, string) (bool, error) { return false, nil }

func (f *fakeBackend) Forget(_ context.Context, id string) error {
	f.mu.Lock()
	f.forgot = append(f.forgot, id)
	f.mu.Unlock()
	return nil
}

// deliver records a state for id; children are tuples.
func (f *fakeBackend) deliver(id string, st State, v any, children ...Tuple) {
	m := &Meta{TaskID: id, Status: st, Result: v}
	for _, c := range children {
		b, _ := json.Marshal(c)
		raw, _ := DecodeJSON(b)
		m.Children = append(m.Children, raw)
	}
	f.Attach(id).Deliver(m)
}

func failure(msg string) map[string]any {
	return map[string]any{"exc_type": "ValueError", "exc_message": []any{msg}, "exc_module": "builtins"}
}

// Forms from PROTOCOL.md §9 and the Celery 5.2.6 capture.
const (
	pyTask  = `[["a", null], null]`
	pyChain = `[["c", [["b", [["a", null], null]], null]], null]`
	pyGroup = `[["g", null], [[["m1", null], null], [["m2", null], null]]]`
	// A group that is the last step of a chain a|group(m1, m2).
	pyChainGroup = `[["g", [["a", null], null]], [[["m1", null], null], [["m2", null], null]]]`
	pyEmptyGroup = `[["g", null], []]`
	pyBareID     = `["a", null]`
)

func TestTupleJSONRoundTrip(t *testing.T) {
	for _, s := range []string{pyTask, pyChain, pyGroup, pyChainGroup, pyEmptyGroup} {
		var tp Tuple
		require.NoError(t, json.Unmarshal([]byte(s), &tp), s)
		b, err := json.Marshal(tp)
		require.NoError(t, err)
		assert.JSONEq(t, s, string(b))
	}
}

func TestTupleBareID(t *testing.T) {
	var tp Tuple
	require.NoError(t, json.Unmarshal([]byte(pyBareID), &tp))
	assert.Equal(t, Tuple{ID: "a"}, tp)
}

func TestTupleRejects(t *testing.T) {
	for _, s := range []string{`null`, `[]`, `["a"]`, `[1, null]`, `[["a"], null]`, `[[1, null], null]`,
		`[["", null], null]`, `[["a", null], 3]`, `[["a", 5], null]`, `{"a": 1}`, `[["a", null], [1]]`, `[`} {
		_, err := FromTuple(s, newFake())
		require.Error(t, err, s)
		assert.True(t, errors.Is(err, ErrMalformed), "%s: %v", s, err)
	}
}

func TestFromTupleChain(t *testing.T) {
	b := newFake()
	res, err := FromTuple(pyChain, b)
	require.NoError(t, err)
	c, ok := res.(*AsyncResult)
	require.True(t, ok)
	assert.Equal(t, "c", c.ID())
	assert.Equal(t, []string{"c", "b", "a"}, c.AsList())
	assert.Equal(t, "a", c.Root().ID())
	assert.Same(t, b, c.Parent().Backend())
	out, _ := json.Marshal(c.AsTuple())
	assert.JSONEq(t, pyChain, string(out))
}

func TestFromTupleGroup(t *testing.T) {
	b := newFake()
	res, err := FromTuple([]byte(pyChainGroup), b)
	require.NoError(t, err)
	g, ok := res.(*GroupResult)
	require.True(t, ok)
	assert.Equal(t, "g", g.ID())
	assert.Equal(t, "a", g.Parent().ID())
	require.Equal(t, 2, g.Len())
	assert.Equal(t, "m1", g.Results()[0].ID())
	assert.Len(t, g.Children(), 2)
	out, _ := json.Marshal(g.AsTuple())
	assert.JSONEq(t, pyChainGroup, string(out))

	empty, err := FromTuple(pyEmptyGroup, b)
	require.NoError(t, err)
	assert.Equal(t, 0, empty.(*GroupResult).Len())

	// Decoded JSON and Tuple values are accepted too.
	v, _ := DecodeJSON([]byte(pyGroup))
	res, err = FromTuple(v, b)
	require.NoError(t, err)
	assert.Equal(t, "g", res.ID())
	res, err = FromTuple(g.AsTuple(), b)
	require.NoError(t, err)
	assert.True(t, res.AsTuple().Equal(g.AsTuple()))
}

func TestFromTupleUnsupportedForms(t *testing.T) {
	nested := `[["g", null], [[["h", null], [[["x", null], null]]]]]`
	_, err := FromTuple(nested, newFake())
	assert.ErrorIs(t, err, ErrNotSupported)
	chordBody := `[["body", [["g", null], []]], null]`
	_, err = FromTuple(chordBody, newFake())
	assert.ErrorIs(t, err, ErrNotSupported)
}

func TestTupleDepthLimit(t *testing.T) {
	s := `null`
	for i := 0; i < maxTupleDepth+10; i++ {
		s = `[["x", ` + s + `], null]`
	}
	_, err := FromTuple(s, newFake())
	require.Error(t, err)
}

func FuzzFromTuple(f *testing.F) {
	for _, s := range []string{pyTask, pyChain, pyGroup, pyChainGroup, pyEmptyGroup, pyBareID, `[["a", null], [["b", null]]]`, `[[1,2],3]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var tp Tuple
		if err := json.Unmarshal(data, &tp); err != nil {
			return
		}
		out, err := json.Marshal(tp)
		if err != nil {
			t.Fatalf("marshal of a parsed tuple failed: %v", err)
		}
		var again Tuple
		if err := json.Unmarshal(out, &again); err != nil {
			t.Fatalf("our own output %s does not parse: %v", out, err)
		}
		if !again.Equal(tp) {
			t.Fatalf("round trip changed the tuple: %s", out)
		}
		res, err := FromTuple(data, newFake())
		if err != nil {
			if !errors.Is(err, ErrNotSupported) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if want := setSemantics(tp); !res.AsTuple().Equal(want) {
			t.Fatalf("FromTuple(%s).AsTuple() = %s, want %s", data, res.AsTuple(), want)
		}
	})
}

// setSemantics is what FromTuple(t).AsTuple() must give: t with every
// group's repeated member ids dropped after their first occurrence.
func setSemantics(t Tuple) Tuple {
	out := Tuple{ID: t.ID, Group: t.Group}
	if t.Parent != nil {
		p := setSemantics(*t.Parent)
		out.Parent = &p
	}
	if t.Nodes != nil {
		out.Nodes = []Tuple{}
	}
	seen := map[string]bool{}
	for _, n := range t.Nodes {
		if seen[n.ID] {
			continue
		}
		seen[n.ID] = true
		out.Nodes = append(out.Nodes, setSemantics(n))
	}
	return out
}

func TestFromTupleRepeatedMember(t *testing.T) {
	res, err := FromTuple(`[["g", null], [[["a", null], null], [["b", null], null], [["a", [["p", null], null]], null]]]`, newFake())
	require.NoError(t, err)
	g, ok := res.(*GroupResult)
	require.True(t, ok)
	require.Equal(t, 2, g.Len())
	assert.Equal(t, "a", g.Results()[0].ID())
	assert.Nil(t, g.Results()[0].Parent(), "the first occurrence is kept")
	assert.Equal(t, "b", g.Results()[1].ID())
	out, err := json.Marshal(g.AsTuple())
	require.NoError(t, err)
	assert.JSONEq(t, `[["g", null], [[["a", null], null], [["b", null], null]]]`, string(out))
}
