package canvas

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

func add(args ...any) *amqp.TaskSig { return amqp.Sig("tasks.add", amqp.Args(args...)) }

// chain3 is chain(add.s(1, 2), add.s(10), add.s(100)): 113.
func chain3() []amqp.Canvas { return []amqp.Canvas{add(1, 2), add(10), add(100)} }

func TestCanvasChainRunsOnOwnQueue(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		last, err := c.Chain(ctx, amqp.NewChain(chain3()...))
		require.NoError(t, err)
		v, err := last.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(113), v)
		steps := []*result.AsyncResult{last.Parent().Parent(), last.Parent(), last}
		want := []int64{3, 13, 113}
		for i, s := range steps {
			v, err := s.Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, want[i], v)
			assert.Equal(t, queue, s.Queue())
			assert.Equal(t, worker.Hostname, s.Worker(), "step %d ran on the run's worker", i)
		}
		assert.Nil(t, steps[0].Parent())
		assert.Same(t, steps[0], last.Root())
	})
}

// pythonFrozen runs Python's canvas code on an expression and returns its
// as_tuple() and as_list() (when it has one) as JSON.
func pythonFrozen(t *testing.T, expr string) (tuple json.RawMessage, list []string) {
	t.Helper()
	script := `
import json
from celery import chain, group
from tasks import add, mul
r = (` + expr + `).freeze()
print(json.dumps({"tuple": r.as_tuple(), "list": r.as_list() if hasattr(r, "as_list") else None}))
`
	out, err := harness.PythonScript(harness.Ctx(t, 30*time.Second), script)
	require.NoError(t, err)
	var got struct {
		Tuple json.RawMessage `json:"tuple"`
		List  []string        `json:"list"`
	}
	require.NoError(t, json.Unmarshal(out, &got), "%s", out)
	return got.Tuple, got.List
}

// shape replaces each id in a tuple's JSON by its position in order.
func shape(raw []byte, order []string) string {
	s := string(raw)
	for i, id := range order {
		s = strings.ReplaceAll(s, `"`+id+`"`, fmt.Sprintf(`"step%d"`, i))
	}
	var v any
	_ = json.Unmarshal([]byte(s), &v)
	b, _ := json.Marshal(v)
	return string(b)
}

func TestCanvasChainMatchesPython(t *testing.T) {
	pyTuple, pyList := pythonFrozen(t, "chain(add.s(1, 2), add.s(10), add.s(100))")
	require.Len(t, pyList, 3)
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		last, err := c.Chain(ctx, amqp.NewChain(chain3()...))
		require.NoError(t, err)
		goTuple, err := json.Marshal(last.AsTuple())
		require.NoError(t, err)
		// Same shape: the last step, with its parents nested inside.
		assert.Equal(t, shape(pyTuple, pyList), shape(goTuple, last.AsList()))
		assert.Len(t, last.AsList(), 3)
		assert.Equal(t, []string{last.ID(), last.Parent().ID(), last.Root().ID()}, last.AsList(), "as_list: nearest first, as Python")
		// What the worker reports agrees: each step's child is the next.
		root := last.Root()
		_, err = last.Get(ctx)
		require.NoError(t, err)
		// The root's result can come after the last step's (see Parent).
		_, err = root.Get(ctx)
		require.NoError(t, err)
		ch := root.Children()
		require.Len(t, ch, 1)
		assert.Equal(t, last.Parent().ID(), ch[0].ID())
	})
}

// Celery 5 marks every step after a failed one FAILURE too, with the same
// exception (the worker's mark_as_failure walks the rest of the chain and
// stores a result for each step, sent to the step's reply_to). So the last
// step does not stay PENDING: it fails with the middle step's exception,
// reported under its own id. Get with follow-parents returns the middle
// step's error, as Celery's does.
func TestCanvasChainMiddleFails(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		// boom receives add's value (3) and raises ValueError(3).
		last, err := c.Chain(ctx, amqp.NewChain(add(1, 2), amqp.Sig("tasks.boom"), add(100)))
		require.NoError(t, err)
		middle := last.Parent()
		_, err = last.Get(ctx) // FollowParents is the default
		var te *result.TaskError
		require.ErrorAs(t, err, &te)
		assert.Equal(t, middle.ID(), te.TaskID, "the failed step's error")
		assert.Equal(t, "ValueError", te.Type)
		assert.Equal(t, []any{int64(3)}, te.Args)
		assert.True(t, errors.Is(err, result.ErrTaskFailed))
		assert.True(t, middle.Failed())
		// The root's SUCCESS comes on its own queue in per-task mode, in no
		// fixed order with the middle step's failure.
		assert.Eventually(t, func() bool { return last.Root().Successful() }, 10*time.Second, 10*time.Millisecond)

		// The last step never ran; the worker marked it failed.
		_, err = last.Get(ctx, result.FollowParents(false))
		require.ErrorAs(t, err, &te)
		assert.Equal(t, last.ID(), te.TaskID)
		assert.Equal(t, "ValueError", te.Type)
		assert.Equal(t, result.Failure, last.State())
		assert.NotContains(t, last.Worker(), "@", "no STARTED: it never ran")
	})
}

func TestCanvasGroupOfFifty(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 60*time.Second)
		const bad = 17
		members := make([]amqp.Canvas, 50)
		for i := range members {
			members[i] = add(i, i)
		}
		members[bad] = amqp.Sig("tasks.boom", amqp.Args("member 17"))
		g, err := c.Group(ctx, amqp.NewGroup(members...))
		require.NoError(t, err)
		require.Equal(t, 50, g.Len())
		seen := map[string]bool{}
		var failed int
		for r, err := range g.Iter(ctx) {
			require.NotNil(t, r, "iteration ended early: %v", err)
			assert.False(t, seen[r.ID()], "yielded once")
			seen[r.ID()] = true
			if err != nil {
				failed++
				assert.Equal(t, g.Results()[bad].ID(), r.ID())
			}
		}
		assert.Len(t, seen, 50)
		assert.Equal(t, 1, failed)

		vals, err := g.Join(ctx, result.Propagate(false))
		require.NoError(t, err)
		require.Len(t, vals, 50)
		for i, v := range vals {
			if i == bad {
				var te *result.TaskError
				require.ErrorAs(t, v.(error), &te)
				assert.Equal(t, []any{"member 17"}, te.Args)
				continue
			}
			assert.Equal(t, int64(2*i), v, "value %d in member order", i)
		}
		_, err = g.Join(ctx)
		assert.ErrorIs(t, err, result.ErrTaskFailed, "propagates by default")
		assert.Equal(t, 49, g.CompletedCount())
		assert.True(t, g.Ready())
		assert.True(t, g.Failed())
		assert.False(t, g.Successful())
		assert.False(t, g.Waiting())
	})
}

func TestCanvasGroupIterCompletionOrder(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		slow := func(s float64) amqp.Canvas { return amqp.Sig("tasks.slow", amqp.Args(s)) }
		g, err := c.Group(ctx, amqp.NewGroup(slow(1.2), slow(0.1), slow(0.6)))
		require.NoError(t, err)
		var order []int
		ids := g.Results()
		for r, err := range g.Iter(ctx) {
			require.NoError(t, err)
			for i, m := range ids {
				if m.ID() == r.ID() {
					order = append(order, i)
				}
			}
		}
		assert.Equal(t, []int{1, 2, 0}, order, "completion order, not member order")
		vals, err := g.Join(ctx)
		require.NoError(t, err)
		assert.Equal(t, []any{1.2, 0.1, 0.6}, vals, "Join keeps member order")
		p := g.Then(nil, nil)
		v, err := p.Wait(ctx)
		require.NoError(t, err)
		assert.Len(t, v, 3)
	})
}

func TestCanvasSpawnChildren(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		r, err := c.Send(ctx, "tasks.spawn", amqp.Args(2))
		require.NoError(t, err)
		v, err := r.Get(ctx)
		require.NoError(t, err)
		spawned := v.([]any)
		require.Len(t, spawned, 2)
		ch := r.Children()
		require.Len(t, ch, 2)
		for i, child := range ch {
			assert.Equal(t, spawned[i], child.ID())
		}
		// Their results go to the worker's own reply queue: waiting ends
		// at ctx, with an error that says why.
		wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = ch[0].Get(wctx)
		assert.Less(t, time.Since(start), 5*time.Second, "no hang past ctx")
		assert.ErrorIs(t, err, result.ErrForeignReplyQueue)
		assert.ErrorIs(t, err, result.ErrTimeout)
		assert.Contains(t, err.Error(), "worker's reply queue")
	})
}

func TestCanvasFromTuplePython(t *testing.T) {
	c := dial(t)
	pyChain, pyList := pythonFrozen(t, "chain(add.s(1, 2), add.s(10), add.s(100))")
	ar, err := c.AsyncResultFromTuple(pyChain)
	require.NoError(t, err)
	assert.Equal(t, pyList, ar.AsList())
	back, err := json.Marshal(ar.AsTuple())
	require.NoError(t, err)
	assert.JSONEq(t, string(pyChain), string(back))

	pyGroup, _ := pythonFrozen(t, "group(add.s(1, 1), add.s(2, 2), mul.s(3, 3))")
	g, err := c.GroupResultFromTuple([]byte(pyGroup))
	require.NoError(t, err)
	assert.Equal(t, 3, g.Len())
	_, err = c.AsyncResultFromTuple([]byte(pyGroup))
	assert.ErrorIs(t, err, result.ErrMalformed, "a group's tuple is not a task's")
	back, err = json.Marshal(g.AsTuple())
	require.NoError(t, err)
	assert.JSONEq(t, string(pyGroup), string(back))

	pyTail, _ := pythonFrozen(t, "chain(add.s(1, 2), group(add.s(10), mul.s(2)))")
	r, err := c.FromTuple(pyTail)
	require.NoError(t, err)
	g, ok := r.(*result.GroupResult)
	require.True(t, ok, "a chain ending with a group is the group, with the chain as parent")
	require.NotNil(t, g.Parent())
	back, err = json.Marshal(g.AsTuple())
	require.NoError(t, err)
	assert.JSONEq(t, string(pyTail), string(back))

	// Our own tuples read back the same way, and the results are live.
	ctx := harness.Ctx(t, 30*time.Second)
	last, err := c.Chain(ctx, amqp.NewChain(chain3()...))
	require.NoError(t, err)
	again, err := c.AsyncResultFromTuple(last.AsTuple())
	require.NoError(t, err)
	v, err := again.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(113), v)
}

// chainWithGroup sends chain(add(1, 2), group(add(10), mul(2))) and returns
// the group (whose parent is the first step).
func chainWithGroup(t *testing.T, ctx context.Context, c *amqp.Client) *result.GroupResult {
	t.Helper()
	g, err := c.ChainGroup(ctx, amqp.NewChain(add(1, 2), amqp.NewGroup(add(10), amqp.Sig("tasks.mul", amqp.Args(2)))))
	require.NoError(t, err)
	require.NotNil(t, g.Parent())
	return g
}

func TestCanvasCollectChainWithGroup(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 30*time.Second)
		g := chainWithGroup(t, ctx, c)
		root := g.Parent()
		var ids []string
		var vals []any
		for d, err := range root.Collect(ctx, false) {
			require.NoError(t, err)
			ids = append(ids, d.Node.ID())
			vals = append(vals, d.Value)
			if d.Parent != nil {
				assert.Contains(t, []string{root.ID(), g.ID()}, d.Parent.ID())
			}
		}
		members := g.Results()
		assert.Equal(t, []string{root.ID(), g.ID(), members[0].ID(), members[1].ID()}, ids)
		assert.Equal(t, []any{int64(3), []any{int64(13), int64(6)}, int64(13), int64(6)}, vals)

		// Everything is ready now: IterDeps walks it without waiting.
		var walked []string
		for d, err := range root.IterDeps(ctx, false) {
			require.NoError(t, err)
			walked = append(walked, d.Node.ID())
			if d.Node.ID() == g.ID() {
				_, isGroup := d.Node.(*result.GroupResult)
				assert.True(t, isGroup, "the worker reports the group as the first step's child")
			}
		}
		assert.Equal(t, ids, walked)
		leaf, err := root.GetLeaf(ctx)
		require.NoError(t, err)
		assert.Equal(t, int64(6), leaf)
	})
}

// stableLabels names nodes by what they ran, so that the DOT output does
// not depend on the random ids.
func stableLabels(n result.Result) string {
	switch x := n.(type) {
	case *result.GroupResult:
		return fmt.Sprintf("group of %d", x.Len())
	case *result.AsyncResult:
		args := make([]string, len(x.Args()))
		for i, a := range x.Args() {
			args[i] = fmt.Sprint(a)
		}
		return fmt.Sprintf("%s(%s) = %v", x.Name(), strings.Join(args, ", "), x.Result())
	}
	return n.ID()
}

func TestCanvasGraphDOT(t *testing.T) {
	c := dial(t)
	ctx := harness.Ctx(t, 30*time.Second)
	g := chainWithGroup(t, ctx, c)
	_, err := g.Parent().GetLeaf(ctx)
	require.NoError(t, err)
	graph, err := g.Parent().Graph()
	require.NoError(t, err)
	again, err := g.Parent().Graph()
	require.NoError(t, err)
	assert.Same(t, graph, again, "Graph is cached")
	assert.Equal(t, 4, graph.Len())

	f := result.DefaultFormatter()
	f.Label = stableLabels
	var buf bytes.Buffer
	require.NoError(t, graph.WriteDOT(&buf, f))
	golden := "testdata/chain_group.dot"
	if os.Getenv("STALK_UPDATE_GOLDEN") == "1" {
		require.NoError(t, os.WriteFile(golden, buf.Bytes(), 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err)
	assert.Equal(t, string(want), buf.String())

	if dot, err := exec.LookPath("dot"); err == nil {
		cmd := exec.Command(dot, "-Tsvg")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "dot: %s", out)
		assert.Contains(t, string(out), "<svg")
	} else {
		t.Log("graphviz not installed: the DOT output was not parsed")
	}
}

func TestCanvasChordIsAnError(t *testing.T) {
	c := dial(t)
	ctx := harness.Ctx(t, 10*time.Second)
	_, err := c.Chord(ctx, []amqp.Canvas{add(1, 1), add(2, 2)}, amqp.Sig("tasks.tsum"))
	require.ErrorIs(t, err, result.ErrNotSupported)
	assert.Contains(t, err.Error(), "chords are not supported by the rpc backend")
	_, err = c.Apply(ctx, amqp.NewChain(amqp.NewGroup(add(1, 1), add(2, 2)), amqp.Sig("tasks.tsum")))
	require.ErrorIs(t, err, result.ErrNotSupported, "a group chained to a task is a chord")
	assert.Equal(t, 0, c.Stats().Pending, "nothing was sent or attached")
}

func TestCanvasGroupOfChainsAndRevoke(t *testing.T) {
	forModes(t, func(t *testing.T, c *amqp.Client) {
		ctx := harness.Ctx(t, 45*time.Second)
		r, err := c.Apply(ctx, amqp.NewGroup(
			amqp.NewChain(add(1, 1), add(1)),
			amqp.NewChain(add(2, 2), amqp.Sig("tasks.mul", amqp.Args(10))),
		), amqp.Queue(queue))
		require.NoError(t, err)
		g := r.(*result.GroupResult)
		vals, err := g.Join(ctx)
		require.NoError(t, err)
		assert.Equal(t, []any{int64(3), int64(40)}, vals)
		for i, m := range g.Results() {
			require.NotNil(t, m.Parent(), "a member chain's result is its last step")
			// A Celery worker sends a chain's next step before it publishes
			// the current step's result, so the last step can settle first:
			// wait for the first step rather than reading its state.
			first, err := m.Parent().Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, []int64{2, 4}[i], first)
			assert.True(t, m.Parent().Successful())
		}

		slow, err := c.Group(ctx, amqp.NewGroup(amqp.Sig("tasks.slow", amqp.Args(30)), amqp.Sig("tasks.slow", amqp.Args(30))))
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			for _, m := range slow.Results() {
				if m.State() != result.Started {
					return false
				}
			}
			return true
		}, 20*time.Second, 20*time.Millisecond)
		_, err = slow.Revoke(ctx, revoke.Terminate())
		require.NoError(t, err)
		vals, err = slow.Join(ctx, result.Propagate(false))
		require.NoError(t, err)
		for _, v := range vals {
			assert.ErrorIs(t, v.(error), result.ErrRevoked)
		}
		assert.True(t, slow.Ready())
		assert.False(t, slow.Failed(), "REVOKED is not failed")
		assert.Equal(t, 0, slow.CompletedCount())
	})
}
