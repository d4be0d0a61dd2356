package result

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chainWithGroup delivers a → b → g(m1, m2): a's child is b, b's child is
// the group g. It is the graph of chain(x, y) whose second step started a
// group.
func chainWithGroup(b *fakeBackend, ready bool) *AsyncResult {
	group := Tuple{ID: "g", Group: true, Nodes: []Tuple{{ID: "m1"}, {ID: "m2"}}}
	b.deliver("a", Success, int64(1), Tuple{ID: "b"})
	b.deliver("b", Success, int64(2), group)
	b.deliver("m1", Success, int64(3))
	if ready {
		b.deliver("m2", Success, int64(4))
	}
	return New("a", b)
}

func TestChildren(t *testing.T) {
	b := newFake()
	r := New("a", b)
	assert.Nil(t, r.Children(), "nothing arrived")
	chainWithGroup(b, true)
	ch := r.Children()
	require.Len(t, ch, 1)
	assert.Equal(t, "b", ch[0].ID())
	assert.Same(t, ch[0], r.Children()[0], "cached once ready")
	bc := ch[0].Children()
	require.Len(t, bc, 1)
	g, ok := bc[0].(*GroupResult)
	require.True(t, ok, "a group tuple becomes a GroupResult")
	assert.Equal(t, []string{"m1", "m2"}, []string{g.Results()[0].ID(), g.Results()[1].ID()})
}

func TestIterDeps(t *testing.T) {
	b := newFake()
	r := chainWithGroup(b, false)
	ctx := context.Background()
	var seen []string
	var parents []string
	var last error
	for d, err := range r.IterDeps(ctx, false) {
		if err != nil {
			last = err
			break
		}
		seen = append(seen, d.Node.ID())
		if d.Parent != nil {
			parents = append(parents, d.Parent.ID())
		} else {
			parents = append(parents, "-")
		}
	}
	assert.Equal(t, []string{"a", "b"}, seen, "stops at the unready group")
	assert.Equal(t, []string{"-", "a"}, parents)
	assert.ErrorIs(t, last, ErrIncompleteStream)

	seen = nil
	for d, err := range r.IterDeps(ctx, true) {
		require.NoError(t, err)
		seen = append(seen, d.Node.ID())
	}
	assert.Equal(t, []string{"a", "b", "g"}, seen, "intermediate: the unready group is yielded, not entered")

	_, err := r.BuildGraph(ctx, false)
	assert.ErrorIs(t, err, ErrIncompleteStream)
	_, err = r.Graph()
	assert.ErrorIs(t, err, ErrIncompleteStream, "not cached")
}

func TestCollectAndGetLeaf(t *testing.T) {
	b := newFake()
	r := chainWithGroup(b, false)
	go func() {
		time.Sleep(20 * time.Millisecond)
		b.deliver("m2", Success, int64(4))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ids []string
	var vals []any
	for d, err := range r.Collect(ctx, false) {
		require.NoError(t, err)
		ids = append(ids, d.Node.ID())
		vals = append(vals, d.Value)
	}
	assert.Equal(t, []string{"a", "b", "g", "m1", "m2"}, ids)
	assert.Equal(t, []any{int64(1), int64(2), []any{int64(3), int64(4)}, int64(3), int64(4)}, vals)
	leaf, err := r.GetLeaf(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(4), leaf)
}

func TestCollectFailure(t *testing.T) {
	b := newFake()
	b.deliver("a", Success, int64(1), Tuple{ID: "b"})
	b.deliver("b", Failure, failure("mid"))
	r := New("a", b)
	ctx := context.Background()
	var n int
	var last error
	for _, err := range r.Collect(ctx, false) {
		n++
		last = err
	}
	assert.Equal(t, 2, n)
	assert.ErrorIs(t, last, ErrTaskFailed)
	_, err := r.GetLeaf(ctx)
	assert.ErrorIs(t, err, ErrTaskFailed)
	leaf, err := r.GetLeaf(ctx, Propagate(false))
	require.NoError(t, err)
	assert.IsType(t, &TaskError{}, leaf)
}

func TestGraphStructure(t *testing.T) {
	b := newFake()
	r := chainWithGroup(b, true)
	g, err := r.Graph()
	require.NoError(t, err)
	g2, err := r.Graph()
	require.NoError(t, err)
	assert.Same(t, g, g2, "cached")
	assert.Equal(t, 5, g.Len())
	assert.Equal(t, "a", g.Root().ID())
	var edges []string
	for _, e := range g.Edges() {
		edges = append(edges, e.From.ID()+"->"+e.To.ID())
	}
	assert.Equal(t, []string{"a->b", "b->g", "g->m1", "g->m2"}, edges)
	a, _ := g.Node("a")
	assert.Equal(t, 5, g.ValencyOf(a))
	var order []string
	for _, n := range g.Topsort() {
		order = append(order, n.ID())
	}
	assert.Equal(t, []string{"a", "b", "g", "m1", "m2"}, order)
}

// testdata/chain_group.dot is what Celery 5.2.6 writes for the same graph
// (AsyncResult.build_graph().to_dot), so the shape is Celery's exactly.
func TestWriteDOTGolden(t *testing.T) {
	b := newFake()
	r := chainWithGroup(b, true)
	g, err := r.BuildGraph(context.Background(), false)
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, g.WriteDOT(&buf, nil))
	want, err := os.ReadFile("testdata/chain_group.dot")
	require.NoError(t, err)
	assert.Equal(t, string(want), buf.String())
	assert.Equal(t, buf.String(), g.String())

	if dot, err := exec.LookPath("dot"); err == nil {
		cmd := exec.Command(dot, "-Tsvg")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "dot rejects our output: %s", out)
		assert.Contains(t, string(out), "<svg")
	}
}

func TestWriteDOTFormatter(t *testing.T) {
	b := newFake()
	b.deliver("a", Success, int64(1), Tuple{ID: "b"})
	b.deliver("b", Failure, failure(`say "hi"`))
	g, err := New("a", b).BuildGraph(context.Background(), false)
	require.NoError(t, err)
	f := DefaultFormatter()
	f.ID = "work"
	f.Label = func(n Result) string { return "task " + n.ID() + "\n\"q\"" }
	f.NodeAttrs = StateAttrs
	var buf bytes.Buffer
	require.NoError(t, g.WriteDOT(&buf, f))
	s := buf.String()
	assert.True(t, strings.HasPrefix(s, "digraph work {\n"))
	assert.Contains(t, s, `"task b\n\"q\"" [shape="oval", arrowhead="vee", style="filled", fontname="HelveticaNeue", fillcolor="lightpink", color="red3"]`)
	assert.Contains(t, s, `root="task a\n\"q\""`)

	undirected := &GraphFormatter{Type: "graph"}
	buf.Reset()
	require.NoError(t, g.WriteDOT(&buf, undirected))
	assert.Contains(t, buf.String(), `"a" -- "b" []`)
	assert.Error(t, g.WriteDOT(&buf, &GraphFormatter{Type: "tree"}))
}

func TestForeignChildError(t *testing.T) {
	b := newFake()
	b.deliver("parent", Success, []any{"c1"}, Tuple{ID: "c1"})
	p := New("parent", b)
	ch := p.Children()
	require.Len(t, ch, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err := ch[0].Get(ctx)
	assert.ErrorIs(t, err, ErrForeignReplyQueue)
	assert.ErrorIs(t, err, ErrTimeout)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "worker's reply queue")

	// A child this client sent (it recorded SendInfo) times out plainly.
	b.Attach("c2").SetSendInfo(SendInfo{Name: "tasks.add"})
	b.deliver("parent2", Success, nil, Tuple{ID: "c2"})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel2()
	_, err = New("parent2", b).Children()[0].Get(ctx2)
	assert.ErrorIs(t, err, ErrTimeout)
	assert.NotErrorIs(t, err, ErrForeignReplyQueue)
}

func TestGetFollowParentsPrefersFailedAncestor(t *testing.T) {
	b := newFake()
	a := New("a", b)
	mid := New("b", b, WithParent(a))
	last := New("c", b, WithParent(mid))
	b.deliver("a", Success, int64(3))
	// The worker marks the step after a failed one failed too; here the
	// last step's message arrives before its parent's, as it can when they
	// come on different queues.
	b.deliver("c", Failure, failure("3"))
	go func() {
		time.Sleep(50 * time.Millisecond)
		b.deliver("b", Failure, failure("3"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := last.Get(ctx)
	var te *TaskError
	require.ErrorAs(t, err, &te)
	assert.Equal(t, "b", te.TaskID)
	_, err = last.Get(ctx, FollowParents(false))
	require.ErrorAs(t, err, &te)
	assert.Equal(t, "c", te.TaskID)
	v, err := last.Get(ctx, Propagate(false))
	require.NoError(t, err)
	assert.Equal(t, "c", v.(*TaskError).TaskID)
}
