package celery

import (
	"errors"
	"fmt"
	"time"

	"github.com/stalk-dev/stalk/result"
)

// ErrNotSupported is wrapped by canvases the rpc result backend cannot
// run: chords, and shapes Celery turns into one.
var ErrNotSupported = result.ErrNotSupported

// NodeKind is the kind of a canvas node.
type NodeKind int

const (
	TaskNode NodeKind = iota
	ChainNode
	GroupNode
)

// Node is one node of a canvas: a task signature, a chain or a group, with
// the options it was given. The amqp package builds the tree from its
// public canvas types.
type Node struct {
	Kind      NodeKind
	Name      string // task name (TaskNode)
	Opts      []Option
	Immutable bool
	Children  []*Node // chain steps or group members
}

// ChordError is returned for every chord, and for chains that Celery would
// turn into one (a group followed by another step).
type ChordError struct{ What string }

func (e *ChordError) Error() string {
	return "stalk: " + e.What + ": chords are not supported by the rpc backend (Celery: the \"rpc\" result backend does not support chords)"
}

func (e *ChordError) Unwrap() error { return ErrNotSupported }

// Task is one task of a plan, with its resolved call.
type Task struct {
	Name      string
	Call      *Call
	Immutable bool
	// Group membership of the last step of a group member (the first
	// message of a member carries the group header itself).
	GroupID    string
	GroupIndex int
	inGroup    bool
}

// Chain is a chain of tasks, optionally ending with a group whose members
// are single tasks (published by the worker).
type Chain struct {
	Tasks []*Task
	Tail  *Group
}

// AllTasks returns the chain's tasks, the tail group's included.
func (ch *Chain) AllTasks() []*Task {
	out := append([]*Task(nil), ch.Tasks...)
	if ch.Tail != nil {
		for _, m := range ch.Tail.Members {
			out = append(out, m.Tasks...)
		}
	}
	return out
}

// Group is a group of chains (most often of one task each).
type Group struct {
	ID      string
	Members []*Chain
}

// Plan is a canvas resolved into the messages a client publishes: one per
// chain (its first step, with the rest embedded). Group is set when the
// canvas is a group, and then Chains are its members.
type Plan struct {
	Chains []*Chain
	Group  *Group
}

// Tasks returns every task of the plan, in publishing order.
func (p *Plan) Tasks() []*Task {
	var out []*Task
	for _, ch := range p.Chains {
		out = append(out, ch.AllTasks()...)
	}
	return out
}

// Planner resolves canvases.
type Planner struct {
	// DefaultQueue routes every step that names no queue, exchange or
	// routing key, at any level.
	DefaultQueue string
	// NewID returns a fresh task id.
	NewID func() string
}

// layer is the options one workflow level (or a step) sets.
type layer struct{ c *Call }

func layerOf(opts []Option) layer { return layer{(&Call{}).Apply(opts)} }

// layers are workflow levels, innermost first.
type layers []layer

func (l layer) checkWorkflow() error {
	c := l.c
	switch {
	case c.Args != nil || c.Kwargs != nil:
		return errors.New("stalk: Args and Kwargs belong to a task signature, not to a chain or group")
	case c.Ignore:
		return errors.New("stalk: IgnoreResult cannot be set on a chain or group")
	case c.Shadow != "":
		return errors.New("stalk: Shadow cannot be set on a chain or group")
	}
	return l.checkCommon("a chain or group")
}

func (l layer) checkCommon(what string) error {
	c := l.c
	switch {
	case !c.Embed.IsZero():
		return fmt.Errorf("stalk: WithEmbed cannot be used in %s: the canvas builds the embed", what)
	case c.ReplyTo != nil:
		return fmt.Errorf("stalk: ReplyTo cannot be used in %s: every step gets its own reply queue", what)
	case c.GroupID != "":
		return fmt.Errorf("stalk: Group cannot be used in %s: use NewGroup", what)
	case c.ParentID != "" || c.RootID != "":
		return fmt.Errorf("stalk: ParentID and RootID cannot be used in %s: the worker sets them", what)
	}
	return nil
}

// Plan resolves the canvas root, sent with workflow options opts.
// allowIgnore lets a lone task be sent with IgnoreResult (Send does; a
// canvas step cannot).
func (pl *Planner) Plan(root *Node, opts []Option, allowIgnore bool) (*Plan, error) {
	if root == nil {
		return nil, errors.New("stalk: nil canvas")
	}
	top := layerOf(opts)
	switch root.Kind {
	case TaskNode:
		if allowIgnore {
			// A lone task: its options and the call's are one.
			c := (&Call{}).Apply(root.Opts).Apply(opts)
			if err := (layer{c}).checkCommonTask(); err != nil {
				return nil, err
			}
			if c.Queue == "" && c.RoutingKey == "" && c.Exchange == nil {
				c.Queue = pl.DefaultQueue
			}
			return &Plan{Chains: []*Chain{{Tasks: []*Task{{Name: root.Name, Call: c, Immutable: root.Immutable}}}}}, nil
		}
		if err := top.checkWorkflow(); err != nil {
			return nil, err
		}
		ch, err := pl.chainOf(&Node{Kind: ChainNode, Children: []*Node{root}}, layers{top}, layers{top})
		if err != nil {
			return nil, err
		}
		return &Plan{Chains: []*Chain{ch}}, nil
	case ChainNode:
		if err := top.checkWorkflow(); err != nil {
			return nil, err
		}
		return pl.chainTop(root, top)
	case GroupNode:
		if err := top.checkWorkflow(); err != nil {
			return nil, err
		}
		g, err := pl.group(root, layers{top}, layers{top}, "")
		if err != nil {
			return nil, err
		}
		return &Plan{Chains: g.Members, Group: g}, nil
	}
	return nil, fmt.Errorf("stalk: unknown canvas node kind %d", root.Kind)
}

// checkCommonTask is what a lone task may not use: only what the canvas
// itself would build.
func (l layer) checkCommonTask() error {
	if l.c.GroupID != "" && l.c.GroupIndex == nil {
		return errors.New("stalk: Group needs an index")
	}
	return nil
}

// item is a flattened chain step.
type item struct {
	task  *Node
	group *Node
	route layers // options of the levels above, innermost first
	first layers // timing options that apply (first steps only)
}

func flatten(ch *Node, route, first layers, out []item) ([]item, error) {
	l := layerOf(ch.Opts)
	if err := l.checkWorkflow(); err != nil {
		return nil, err
	}
	route = append(layers{l}, route...)
	if len(ch.Children) == 0 {
		return nil, errors.New("stalk: empty chain")
	}
	for i, s := range ch.Children {
		var f layers
		if i == 0 {
			f = append(layers{l}, first...)
		}
		if s == nil {
			return nil, errors.New("stalk: nil step in a chain")
		}
		switch s.Kind {
		case TaskNode:
			out = append(out, item{task: s, route: route, first: f})
		case ChainNode:
			var err error
			if out, err = flatten(s, route, f, out); err != nil {
				return nil, err
			}
		case GroupNode:
			out = append(out, item{group: s, route: route, first: f})
		default:
			return nil, fmt.Errorf("stalk: unknown canvas node kind %d", s.Kind)
		}
	}
	return out, nil
}

func (pl *Planner) chainTop(ch *Node, top layer) (*Plan, error) {
	items, err := flatten(ch, layers{top}, layers{top}, nil)
	if err != nil {
		return nil, err
	}
	// A chain that is just a group is a group.
	if len(items) == 1 && items[0].group != nil {
		g, err := pl.group(items[0].group, items[0].route, items[0].first, "")
		if err != nil {
			return nil, err
		}
		return &Plan{Chains: g.Members, Group: g}, nil
	}
	id := layerOf(ch.Opts).c.TaskID
	if id == "" {
		id = top.c.TaskID
	}
	pc, err := pl.items(items, id)
	if err != nil {
		return nil, err
	}
	return &Plan{Chains: []*Chain{pc}}, nil
}

func (pl *Planner) chainOf(ch *Node, route, first layers) (*Chain, error) {
	items, err := flatten(ch, route, first, nil)
	if err != nil {
		return nil, err
	}
	return pl.items(items, layerOf(ch.Opts).c.TaskID)
}

// items turns flattened steps into a chain; lastID is the id the chain
// itself was given (its last step's, or its tail group's).
func (pl *Planner) items(items []item, lastID string) (*Chain, error) {
	pc := &Chain{}
	for i, it := range items {
		if it.group != nil {
			if i == 0 || i != len(items)-1 {
				return nil, &ChordError{"a group followed by another step is a chord"}
			}
			id := lastID
			lastID = ""
			g, err := pl.group(it.group, it.route, nil, id)
			if err != nil {
				return nil, err
			}
			for _, m := range g.Members {
				if len(m.Tasks) != 1 || m.Tail != nil {
					return nil, fmt.Errorf("stalk: a group inside a chain may only hold tasks, not chains: %w", ErrNotSupported)
				}
			}
			pc.Tail = g
			continue
		}
		t, err := pl.task(it.task, it.route, it.first)
		if err != nil {
			return nil, err
		}
		pc.Tasks = append(pc.Tasks, t)
	}
	if lastID != "" && pc.Tail == nil {
		last := pc.Tasks[len(pc.Tasks)-1]
		if last.Call.TaskID == "" {
			last.Call.TaskID = lastID
		}
	}
	return pc, nil
}

func (pl *Planner) group(g *Node, route, first layers, id string) (*Group, error) {
	l := layerOf(g.Opts)
	if err := l.checkWorkflow(); err != nil {
		return nil, err
	}
	if id == "" {
		id = l.c.TaskID
	}
	if id == "" && len(route) > 0 && len(first) > 0 && route[0] == first[0] {
		id = route[0].c.TaskID // the send's own TaskID names the group
	}
	if id == "" {
		id = pl.NewID()
	}
	route = append(layers{l}, route...)
	first = append(layers{l}, first...)
	pg := &Group{ID: id}
	var add func(members []*Node, route, first layers) error
	add = func(members []*Node, route, first layers) error {
		for _, m := range members {
			if m == nil {
				return errors.New("stalk: nil member in a group")
			}
			switch m.Kind {
			case TaskNode:
				t, err := pl.task(m, route, first)
				if err != nil {
					return err
				}
				pg.Members = append(pg.Members, &Chain{Tasks: []*Task{t}})
			case ChainNode:
				items, err := flatten(m, route, first, nil)
				if err != nil {
					return err
				}
				if items[len(items)-1].group != nil {
					return fmt.Errorf("stalk: a group member that ends with a group is a nested group: %w", ErrNotSupported)
				}
				pc, err := pl.items(items, layerOf(m.Opts).c.TaskID)
				if err != nil {
					return err
				}
				pg.Members = append(pg.Members, pc)
			case GroupNode:
				nl := layerOf(m.Opts)
				if err := nl.checkWorkflow(); err != nil {
					return err
				}
				if err := add(m.Children, append(layers{nl}, route...), append(layers{nl}, first...)); err != nil {
					return err
				}
			default:
				return fmt.Errorf("stalk: unknown canvas node kind %d", m.Kind)
			}
		}
		return nil
	}
	if err := add(g.Children, route, first); err != nil {
		return nil, err
	}
	for i, m := range pg.Members {
		last := m.Tasks[len(m.Tasks)-1]
		last.GroupID, last.GroupIndex, last.inGroup = pg.ID, i, true
	}
	return pg, nil
}

// task resolves a signature's options against the workflow levels above
// it: its own options win; routing, priority, time limits, headers and
// stamps come from the nearest level that sets them; countdown, eta and
// expires only from the levels it is the first step of.
func (pl *Planner) task(s *Node, route, first layers) (*Task, error) {
	own := layerOf(s.Opts)
	if err := own.checkCommon("a canvas step"); err != nil {
		return nil, err
	}
	if own.c.Ignore {
		return nil, fmt.Errorf("stalk: task %s: IgnoreResult cannot be used in a canvas step", s.Name)
	}
	c := own.c
	for _, l := range route {
		w := l.c
		if c.Queue == "" && c.RoutingKey == "" && c.Exchange == nil {
			c.Queue, c.RoutingKey, c.Exchange = w.Queue, w.RoutingKey, w.Exchange
		}
		if c.Priority == nil {
			c.Priority = w.Priority
		}
		if c.HardLimit == nil {
			c.HardLimit = w.HardLimit
		}
		if c.SoftLimit == nil {
			c.SoftLimit = w.SoftLimit
		}
		c.Headers = inherit(c.Headers, w.Headers)
		c.Stamps = inherit(c.Stamps, w.Stamps)
	}
	for _, l := range first {
		w := l.c
		if c.Countdown == nil && c.ETA.IsZero() {
			c.Countdown, c.ETA = w.Countdown, w.ETA
		}
		if c.Expires.IsZero() && c.ExpiresIn == nil {
			c.Expires, c.ExpiresIn = w.Expires, w.ExpiresIn
		}
	}
	if c.Queue == "" && c.RoutingKey == "" && c.Exchange == nil {
		c.Queue = pl.DefaultQueue
	}
	return &Task{Name: s.Name, Call: c, Immutable: s.Immutable}, nil
}

func inherit(own, from map[string]any) map[string]any {
	for k, v := range from {
		if _, ok := own[k]; !ok {
			if own == nil {
				own = map[string]any{}
			}
			own[k] = v
		}
	}
	return own
}

// Frozen is a plan with every task id given and every message built.
type Frozen struct {
	*Plan
	// Messages are published in order: the first task of each chain, with
	// the rest of the chain embedded.
	Messages []*Message
	// First are the tasks the messages are for.
	First []*Task
}

// Freeze gives every task its id and builds the messages to publish.
// replyTo names the reply queue of a task id ("" for none). Every step is
// validated as a message, so that nothing is published when one of them
// is bad.
func (pl *Planner) Freeze(p *Plan, replyTo func(id string) string) (*Frozen, error) {
	tasks := p.Tasks()
	var seen map[string]bool
	if len(tasks) > 1 {
		seen = make(map[string]bool, len(tasks))
	}
	for _, t := range tasks {
		if t.Call.TaskID == "" {
			t.Call.TaskID = pl.NewID()
		}
		if seen[t.Call.TaskID] {
			return nil, fmt.Errorf("stalk: task id %s is used twice in the canvas", t.Call.TaskID)
		}
		if len(tasks) > 1 {
			seen[t.Call.TaskID] = true
			if _, err := Build(t.Name, t.Call, ""); err != nil {
				return nil, fmt.Errorf("stalk: task %s: %w", t.Name, err)
			}
		}
	}
	f := &Frozen{Plan: p}
	for _, ch := range p.Chains {
		m, err := pl.chainMessage(ch, replyTo)
		if err != nil {
			return nil, err
		}
		f.Messages = append(f.Messages, m)
		f.First = append(f.First, ch.Tasks[0])
	}
	return f, nil
}

// chainMessage builds the message of a chain's first task, with the rest
// of the chain embedded in reverse.
func (pl *Planner) chainMessage(ch *Chain, replyTo func(string) string) (*Message, error) {
	var rest []Signature
	if ch.Tail != nil {
		rest = append(rest, groupSignature(ch.Tail, replyTo))
	}
	for i := len(ch.Tasks) - 1; i >= 1; i-- {
		rest = append(rest, embedded(ch.Tasks[i], replyTo))
	}
	first := ch.Tasks[0]
	c := first.Call
	if len(ch.Tasks) > 1 || ch.Tail != nil || first.inGroup {
		// The message's call differs from the task's: keep the task's as
		// planned.
		c = c.Clone()
		if len(ch.Tasks) > 1 || ch.Tail != nil {
			c.Embed = Embed{Chain: rest}
		}
		if first.inGroup {
			c.GroupID = first.GroupID
			idx := first.GroupIndex
			c.GroupIndex = &idx
		}
	}
	rt := ""
	if !c.Ignore {
		rt = replyTo(c.TaskID)
	}
	m, err := Build(first.Name, c, rt)
	if err != nil {
		return nil, fmt.Errorf("stalk: task %s: %w", first.Name, err)
	}
	return m, nil
}

// embedded returns the signature the worker sends for a later chain step:
// frozen with its task id and reply queue, and routed explicitly.
func embedded(t *Task, replyTo func(string) string) Signature {
	c := t.Call
	o := map[string]any{
		"task_id":  c.TaskID,
		"reply_to": replyTo(c.TaskID),
	}
	if c.Queue != "" {
		o["queue"] = c.Queue
	}
	if c.RoutingKey != "" {
		o["routing_key"] = c.RoutingKey
	}
	if c.Exchange != nil {
		o["exchange"] = *c.Exchange
	}
	if c.Priority != nil {
		o["priority"] = *c.Priority
	}
	if c.HardLimit != nil {
		o["time_limit"] = *c.HardLimit
	}
	if c.SoftLimit != nil {
		o["soft_time_limit"] = *c.SoftLimit
	}
	if c.Countdown != nil {
		o["countdown"] = c.Countdown.Seconds()
	}
	if !c.ETA.IsZero() {
		o["eta"] = IsoTime(c.ETA)
	}
	if exp := c.expires(c.now()); !exp.IsZero() {
		// Celery reads a number as seconds from when the step is sent.
		o["expires"] = max(time.Until(exp).Seconds(), 0)
	}
	if c.Shadow != "" {
		o["shadow"] = c.Shadow
	}
	if len(c.Headers) > 0 {
		o["headers"] = c.Headers
	}
	if len(c.Stamps) > 0 {
		names := sortedKeys(c.Stamps)
		stamped := make([]any, len(names))
		for i, k := range names {
			stamped[i] = k
			o[k] = c.Stamps[k]
		}
		o["stamped_headers"] = stamped
	}
	if t.inGroup {
		o["group_id"] = t.GroupID
		o["group_index"] = t.GroupIndex
	}
	return Signature{Task: t.Name, Args: c.Args, Kwargs: c.Kwargs, Options: o, Immutable: t.Immutable}
}

// groupSignature is the embedded form of a group that ends a chain. The
// group's own options hold only its id: the worker passes them to every
// member, so a reply_to or queue there would override the members' own.
func groupSignature(g *Group, replyTo func(string) string) Signature {
	tasks := make([]any, len(g.Members))
	for i, m := range g.Members {
		tasks[i] = embedded(m.Tasks[0], replyTo)
	}
	return Signature{
		Task:        "celery.group",
		Args:        []any{},
		Kwargs:      map[string]any{"tasks": tasks},
		Options:     map[string]any{"task_id": g.ID},
		SubtaskType: "group",
	}
}
