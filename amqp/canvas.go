package amqp

import (
	"context"
	"errors"
	"fmt"

	"github.com/stalk-dev/stalk/internal/celery"
	"github.com/stalk-dev/stalk/result"
)

// Canvas is a workflow: a task signature (Sig, Si), a chain (NewChain) or
// a group (NewGroup). Canvases are values: building one publishes
// nothing, and one canvas can be sent many times, each time with fresh
// task ids unless TaskID options fix them.
type Canvas interface {
	node() *celery.Node
}

// TaskSig is one task call in a canvas (Celery's signature).
type TaskSig struct {
	name      string
	opts      []SendOption
	immutable bool
}

// Sig returns a signature of task with the given options (Args, Kwargs,
// Queue, Priority, TimeLimit, Countdown, TaskID, ...). In a chain, each step
// after the first receives the previous step's return value as an extra
// first argument, as in Celery, unless the signature is immutable.
func Sig(task string, opts ...SendOption) *TaskSig {
	return &TaskSig{name: task, opts: opts}
}

// Si returns an immutable signature: in a chain it does not receive the
// previous step's return value (Celery's si()).
func Si(task string, opts ...SendOption) *TaskSig {
	return &TaskSig{name: task, opts: opts, immutable: true}
}

// Set returns a copy of s with more options.
func (s *TaskSig) Set(opts ...SendOption) *TaskSig {
	return &TaskSig{name: s.name, opts: append(append([]SendOption(nil), s.opts...), opts...), immutable: s.immutable}
}

// SetImmutable returns a copy of s that is immutable or not.
func (s *TaskSig) SetImmutable(immutable bool) *TaskSig {
	return &TaskSig{name: s.name, opts: s.opts, immutable: immutable}
}

// Name returns the task name.
func (s *TaskSig) Name() string { return s.name }

// Immutable reports whether the signature ignores its parent's value.
func (s *TaskSig) Immutable() bool { return s.immutable }

func (s *TaskSig) node() *celery.Node {
	if s == nil {
		return nil
	}
	return &celery.Node{Kind: celery.TaskNode, Name: s.name, Opts: s.opts, Immutable: s.immutable}
}

// ChainSig runs its steps one after another, each step's value passed to
// the next (Celery's chain).
type ChainSig struct {
	steps []Canvas
	opts  []SendOption
}

// NewChain returns a chain of steps: task signatures, nested chains (which
// are flattened), and, as the last step only, a group of tasks. A group
// followed by another step is a chord, which the rpc backend does not
// support.
func NewChain(steps ...Canvas) *ChainSig { return &ChainSig{steps: steps} }

// Set returns a copy of the chain with workflow options. Routing options
// (Queue, RoutingKey, Exchange), Priority, TimeLimit, SoftTimeLimit,
// Headers and Stamp apply to every step that does not set its own;
// Countdown, ETA and Expires apply to the first step only; TaskID sets the
// last step's id, as in Celery. Unlike Python's client, which routes only
// the first step, every step goes to the chain's queue unless it names its
// own.
func (c *ChainSig) Set(opts ...SendOption) *ChainSig {
	return &ChainSig{steps: c.steps, opts: append(append([]SendOption(nil), c.opts...), opts...)}
}

func (c *ChainSig) node() *celery.Node {
	if c == nil {
		return nil
	}
	return &celery.Node{Kind: celery.ChainNode, Opts: c.opts, Children: nodes(c.steps)}
}

// endsWithGroup reports whether the chain's last step, flattened, is a
// group.
func (c *ChainSig) endsWithGroup() bool {
	if len(c.steps) == 0 {
		return false
	}
	switch x := c.steps[len(c.steps)-1].(type) {
	case *GroupSig:
		return x != nil
	case *ChainSig:
		return x != nil && x.endsWithGroup()
	}
	return false
}

// GroupSig runs its members in parallel (Celery's group).
type GroupSig struct {
	members []Canvas
	opts    []SendOption
}

// NewGroup returns a group of task signatures and chains of tasks. Nested
// groups are flattened into their parent, as Celery does.
func NewGroup(members ...Canvas) *GroupSig { return &GroupSig{members: members} }

// Set returns a copy of the group with workflow options: as for ChainSig,
// except that Countdown, ETA and Expires apply to every member, and TaskID
// sets the group id.
func (g *GroupSig) Set(opts ...SendOption) *GroupSig {
	return &GroupSig{members: g.members, opts: append(append([]SendOption(nil), g.opts...), opts...)}
}

func (g *GroupSig) node() *celery.Node {
	if g == nil {
		return nil
	}
	return &celery.Node{Kind: celery.GroupNode, Opts: g.opts, Children: nodes(g.members)}
}

func nodes(cs []Canvas) []*celery.Node {
	out := make([]*celery.Node, len(cs))
	for i, c := range cs {
		if c != nil {
			out[i] = c.node()
		}
	}
	return out
}

// Chord always fails with an error wrapping result.ErrNotSupported: a
// chord needs a result backend that counts its header's results, and the
// rpc backend, the only AMQP one in Celery 5, cannot.
func (c *Client) Chord(ctx context.Context, header []Canvas, body Canvas, opts ...SendOption) (*result.AsyncResult, error) {
	return nil, &celery.ChordError{What: "chord"}
}

// Chain sends ch and returns its last step's result; its Parent links lead
// back to the first step (AsList lists them). opts are workflow options,
// as ChainSig.Set describes. A chain that ends with a group has a group
// result: send it with ChainGroup.
//
// Every task is given its id and its reply queue before anything is
// published, and every reply queue is declared and consumed first (in
// per-task mode, one queue per step), so no state of any step can be
// missed. Steps after the first are embedded in the first message,
// reversed, each with its task_id and reply_to in its options, as Celery
// does; the worker publishes them.
func (c *Client) Chain(ctx context.Context, ch *ChainSig, opts ...SendOption) (*result.AsyncResult, error) {
	if ch == nil {
		return nil, errors.New("stalk: send chain: nil chain")
	}
	if ch.endsWithGroup() {
		return nil, errors.New("stalk: send chain: the chain ends with a group, so its result is a *result.GroupResult: send it with ChainGroup")
	}
	s, err := c.sendCanvas(ctx, ch.node(), opts)
	if err != nil {
		return nil, fmt.Errorf("stalk: send chain: %w", trimPrefix(err))
	}
	if s.last == nil {
		return nil, errors.New("stalk: send chain: the chain is a single group: send it with Group")
	}
	return s.last, nil
}

// ChainGroup sends a chain whose last step is a group, and returns the
// group's result; its Parent is the step before the group.
func (c *Client) ChainGroup(ctx context.Context, ch *ChainSig, opts ...SendOption) (*result.GroupResult, error) {
	if ch == nil {
		return nil, errors.New("stalk: send chain: nil chain")
	}
	if !ch.endsWithGroup() {
		return nil, errors.New("stalk: send chain: the chain does not end with a group: send it with Chain")
	}
	s, err := c.sendCanvas(ctx, ch.node(), opts)
	if err != nil {
		return nil, fmt.Errorf("stalk: send chain: %w", trimPrefix(err))
	}
	return s.group, nil
}

// Group sends g and returns its result. Its members are published by the
// client, in order, each with the group header and group_index. If
// publishing fails part way through, the members already sent stay sent,
// and the error says how many.
func (c *Client) Group(ctx context.Context, g *GroupSig, opts ...SendOption) (*result.GroupResult, error) {
	if g == nil {
		return nil, errors.New("stalk: send group: nil group")
	}
	s, err := c.sendCanvas(ctx, g.node(), opts)
	if err != nil {
		return nil, fmt.Errorf("stalk: send group: %w", trimPrefix(err))
	}
	return s.group, nil
}

// Apply sends any canvas and returns its result as a result.Result: an
// *result.AsyncResult for a task or a chain, a *result.GroupResult for a
// group or a chain that ends with one. It is for canvases whose shape is
// only known at run time; Send, Chain, ChainGroup and Group return typed
// results.
func (c *Client) Apply(ctx context.Context, cv Canvas, opts ...SendOption) (result.Result, error) {
	if cv == nil {
		return nil, errors.New("stalk: send canvas: nil canvas")
	}
	s, err := c.sendCanvas(ctx, cv.node(), opts)
	if err != nil {
		return nil, fmt.Errorf("stalk: send canvas: %w", trimPrefix(err))
	}
	if s.group != nil {
		return s.group, nil
	}
	return s.last, nil
}

func (c *Client) sendCanvas(ctx context.Context, n *celery.Node, opts []SendOption) (*sent, error) {
	if n == nil {
		return nil, errors.New("nil canvas")
	}
	p, err := c.planner.Plan(n, opts, false)
	if err != nil {
		return nil, err
	}
	return c.dispatch(ctx, p)
}
