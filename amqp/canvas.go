package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/result"
)

// Canvas is a workflow that Apply sends: a task signature (Sig, Si), a
// chain (NewChain) or a group (NewGroup). Canvases are values: building one
// publishes nothing, and one canvas can be applied many times, each time
// with fresh task ids unless TaskID options fix them.
type Canvas interface{ canvas() }

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

func (*TaskSig) canvas() {}

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
// (Queue, RoutingKey, Exchange), Priority, TimeLimit, SoftTimeLimit and
// Headers apply to every step that does not set its own; Countdown, ETA
// and Expires apply to the first step only; TaskID sets the last step's id,
// as in Celery. Unlike Python's client, which routes only the first step,
// every step goes to the chain's queue unless it names its own.
func (c *ChainSig) Set(opts ...SendOption) *ChainSig {
	return &ChainSig{steps: c.steps, opts: append(append([]SendOption(nil), c.opts...), opts...)}
}

func (*ChainSig) canvas() {}

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

func (*GroupSig) canvas() {}

// chordError is returned for every chord, and for chains that Celery would
// turn into one (a group followed by another step).
type chordError struct{ what string }

func (e *chordError) Error() string {
	return "stalk: " + e.what + ": chords are not supported by the rpc backend (Celery: the \"rpc\" result backend does not support chords)"
}

func (e *chordError) Unwrap() error { return result.ErrNotSupported }

// Chord always fails with an error wrapping result.ErrNotSupported: a
// chord needs a result backend that counts its header's results, and the
// rpc backend, the only AMQP one in Celery 5, cannot.
func (c *Client) Chord(ctx context.Context, header []Canvas, body Canvas) (*result.AsyncResult, error) {
	return nil, &chordError{"chord"}
}

// Chain sends the steps as a chain (see NewChain) and returns the last
// step's result. Its Parent links lead back to the first step; AsList lists
// them. A chain that ends with a group returns a *result.GroupResult: send
// it with Apply.
func (c *Client) Chain(ctx context.Context, steps ...Canvas) (*result.AsyncResult, error) {
	return c.applyChain(ctx, NewChain(steps...))
}

func (c *Client) applyChain(ctx context.Context, ch *ChainSig, opts ...SendOption) (*result.AsyncResult, error) {
	if n := len(ch.steps); n > 0 {
		if _, ok := ch.steps[n-1].(*GroupSig); ok {
			return nil, errors.New("stalk: the chain ends with a group, so its result is a *result.GroupResult: send it with Apply")
		}
	}
	r, err := c.Apply(ctx, ch, opts...)
	if err != nil {
		return nil, err
	}
	ar, ok := r.(*result.AsyncResult)
	if !ok {
		return nil, fmt.Errorf("stalk: the chain's result is a %T: send it with Apply", r)
	}
	return ar, nil
}

// Group sends the members as a group (see NewGroup) and returns its result.
func (c *Client) Group(ctx context.Context, members ...Canvas) (*result.GroupResult, error) {
	r, err := c.Apply(ctx, NewGroup(members...))
	if err != nil {
		return nil, err
	}
	return r.(*result.GroupResult), nil
}

// Apply sends a canvas and returns its result: an *result.AsyncResult for a
// task or a chain, a *result.GroupResult for a group or a chain that ends
// with one. opts are workflow options, as ChainSig.Set and GroupSig.Set
// describe.
//
// Every task is given its id and its reply queue before anything is
// published, and every reply queue is declared and consumed first (in
// per-task mode, one queue per step), so no state of any step can be
// missed. Steps after the first of a chain are embedded in the first
// message, reversed, each with its task_id and reply_to in its options, as
// Celery does; the worker publishes them. A group's members are published
// by Apply, each with the group header and group_index.
//
// Bad arguments and unsupported shapes (a chord, a group followed by a
// step, a group member that ends with a group) are reported before anything
// is published. If publishing fails part way through a group, the members
// already sent stay sent.
func (c *Client) Apply(ctx context.Context, cv Canvas, opts ...SendOption) (result.Result, error) {
	p, err := c.makePlan(cv, opts)
	if err != nil {
		return nil, err
	}
	out, err := c.freeze(p)
	if err != nil {
		return nil, err
	}
	if c.pubConn.State() == broker.Closed {
		return nil, ErrClosed
	}
	return c.send(ctx, p, out)
}

func (c *Client) makePlan(cv Canvas, opts []SendOption) (*plan, error) {
	top := layerOf(opts)
	if err := top.checkWorkflow(); err != nil {
		return nil, err
	}
	switch x := cv.(type) {
	case *TaskSig:
		ch, err := c.planChainOf(NewChain(x), layers{top}, layers{top})
		if err != nil {
			return nil, err
		}
		return &plan{chains: []*planChain{ch}}, nil
	case *ChainSig:
		return c.planChainTop(x, top)
	case *GroupSig:
		g, err := c.planGroup(x, layers{top}, layers{top}, "")
		if err != nil {
			return nil, err
		}
		return &plan{chains: g.members, group: g}, nil
	case nil:
		return nil, errors.New("stalk: nil canvas")
	}
	return nil, fmt.Errorf("stalk: unknown canvas %T", cv)
}

// layer is the options one workflow level (or a step) sets.
type layer struct{ cfg *sendConfig }

func layerOf(opts []SendOption) layer {
	cfg := &sendConfig{}
	for _, o := range opts {
		if o != nil {
			o(cfg)
		}
	}
	return layer{cfg}
}

// layers are workflow levels, innermost first.
type layers []layer

func (l layer) checkWorkflow() error {
	c := l.cfg
	switch {
	case c.args != nil || c.kwargs != nil:
		return errors.New("stalk: Args and Kwargs belong to a task signature, not to a chain or group")
	case c.ignore:
		return errors.New("stalk: IgnoreResult cannot be set on a chain or group")
	case c.shadow != "":
		return errors.New("stalk: Shadow cannot be set on a chain or group")
	}
	return l.checkCommon("a chain or group")
}

func (l layer) checkCommon(what string) error {
	c := l.cfg
	switch {
	case c.embed.Callbacks != nil || c.embed.Errbacks != nil || c.embed.Chain != nil || c.embed.Chord != nil:
		return fmt.Errorf("stalk: WithEmbed cannot be used in %s: the canvas builds the embed", what)
	case c.replyTo != nil:
		return fmt.Errorf("stalk: ReplyTo cannot be used in %s: every step gets its own reply queue", what)
	case c.groupID != "":
		return fmt.Errorf("stalk: Group cannot be used in %s: use NewGroup", what)
	case c.parentID != "" || c.rootID != "":
		return fmt.Errorf("stalk: ParentID and RootID cannot be used in %s: the worker sets them", what)
	}
	return nil
}

// planTask is one task of a plan, with its id and resolved options.
type planTask struct {
	sig   *TaskSig
	cfg   *sendConfig
	entry *result.Entry
	res   *result.AsyncResult
	// group membership through options, for the last step of a member
	// chain (the first message of a chain carries the header itself).
	groupID    string
	groupIndex int
}

// planChain is a chain of tasks, optionally ending with a group whose
// members are single tasks (sent by the worker).
type planChain struct {
	tasks []*planTask
	tail  *planGroup
}

type planGroup struct {
	id      string
	members []*planChain
}

type plan struct {
	chains []*planChain // published in order
	group  *planGroup   // the result when the canvas is a group
}

func (p *plan) allTasks() []*planTask {
	var out []*planTask
	for _, ch := range p.chains {
		out = append(out, ch.tasks...)
		if ch.tail != nil {
			for _, m := range ch.tail.members {
				out = append(out, m.tasks...)
			}
		}
	}
	return out
}

// item is a flattened chain step.
type item struct {
	task  *TaskSig
	group *GroupSig
	route layers // options of the levels above, innermost first
	first layers // timing options that apply (first steps only)
}

func flattenChain(ch *ChainSig, route, first layers, out []item) ([]item, error) {
	l := layerOf(ch.opts)
	if err := l.checkWorkflow(); err != nil {
		return nil, err
	}
	route = append(layers{l}, route...)
	if len(ch.steps) == 0 {
		return nil, errors.New("stalk: empty chain")
	}
	for i, s := range ch.steps {
		f := first
		if i == 0 {
			f = append(layers{l}, first...)
		} else {
			f = nil
		}
		switch x := s.(type) {
		case *TaskSig:
			out = append(out, item{task: x, route: route, first: f})
		case *ChainSig:
			var err error
			if out, err = flattenChain(x, route, f, out); err != nil {
				return nil, err
			}
		case *GroupSig:
			out = append(out, item{group: x, route: route, first: f})
		case nil:
			return nil, errors.New("stalk: nil step in a chain")
		default:
			return nil, fmt.Errorf("stalk: unknown canvas %T", s)
		}
	}
	return out, nil
}

func (c *Client) planChainTop(ch *ChainSig, top layer) (*plan, error) {
	items, err := flattenChain(ch, layers{top}, layers{top}, nil)
	if err != nil {
		return nil, err
	}
	// A chain that is just a group is a group.
	if len(items) == 1 && items[0].group != nil {
		g, err := c.planGroup(items[0].group, items[0].route, items[0].first, "")
		if err != nil {
			return nil, err
		}
		return &plan{chains: g.members, group: g}, nil
	}
	pc, err := c.planItems(items, chainTaskID(ch, top))
	if err != nil {
		return nil, err
	}
	return &plan{chains: []*planChain{pc}}, nil
}

// chainTaskID is the TaskID given to the chain itself: the last step's id.
func chainTaskID(ch *ChainSig, top layer) string {
	if id := layerOf(ch.opts).cfg.taskID; id != "" {
		return id
	}
	return top.cfg.taskID
}

func (c *Client) planChainOf(ch *ChainSig, route, first layers) (*planChain, error) {
	items, err := flattenChain(ch, route, first, nil)
	if err != nil {
		return nil, err
	}
	return c.planItems(items, layerOf(ch.opts).cfg.taskID)
}

func (c *Client) planItems(items []item, lastID string) (*planChain, error) {
	pc := &planChain{}
	for i, it := range items {
		if it.group != nil {
			if i == 0 || i != len(items)-1 {
				return nil, &chordError{"a group followed by another step is a chord"}
			}
			id := ""
			if lastID != "" {
				id, lastID = lastID, ""
			}
			g, err := c.planGroup(it.group, it.route, nil, id)
			if err != nil {
				return nil, err
			}
			for _, m := range g.members {
				if len(m.tasks) != 1 || m.tail != nil {
					return nil, fmt.Errorf("stalk: a group inside a chain may only hold tasks, not chains: %w", result.ErrNotSupported)
				}
			}
			pc.tail = g
			continue
		}
		t, err := c.planTaskOf(it.task, it.route, it.first)
		if err != nil {
			return nil, err
		}
		pc.tasks = append(pc.tasks, t)
	}
	if lastID != "" && pc.tail == nil {
		last := pc.tasks[len(pc.tasks)-1]
		if last.cfg.taskID == "" {
			last.cfg.taskID = lastID
		}
	}
	return pc, nil
}

func (c *Client) planGroup(g *GroupSig, route, first layers, id string) (*planGroup, error) {
	l := layerOf(g.opts)
	if err := l.checkWorkflow(); err != nil {
		return nil, err
	}
	if id == "" {
		id = l.cfg.taskID
	}
	if id == "" && len(route) > 0 && len(first) > 0 && route[0] == first[0] {
		id = route[0].cfg.taskID // Apply's own TaskID names the group
	}
	if id == "" {
		id = uuid.NewString()
	}
	route = append(layers{l}, route...)
	first = append(layers{l}, first...)
	pg := &planGroup{id: id}
	var add func(members []Canvas, route, first layers) error
	add = func(members []Canvas, route, first layers) error {
		for _, m := range members {
			switch x := m.(type) {
			case *TaskSig:
				t, err := c.planTaskOf(x, route, first)
				if err != nil {
					return err
				}
				pg.members = append(pg.members, &planChain{tasks: []*planTask{t}})
			case *ChainSig:
				items, err := flattenChain(x, route, first, nil)
				if err != nil {
					return err
				}
				if items[len(items)-1].group != nil {
					return fmt.Errorf("stalk: a group member that ends with a group is a nested group: %w", result.ErrNotSupported)
				}
				pc, err := c.planItems(items, layerOf(x.opts).cfg.taskID)
				if err != nil {
					return err
				}
				pg.members = append(pg.members, pc)
			case *GroupSig:
				nl := layerOf(x.opts)
				if err := nl.checkWorkflow(); err != nil {
					return err
				}
				if err := add(x.members, append(layers{nl}, route...), append(layers{nl}, first...)); err != nil {
					return err
				}
			case nil:
				return errors.New("stalk: nil member in a group")
			default:
				return fmt.Errorf("stalk: unknown canvas %T", m)
			}
		}
		return nil
	}
	if err := add(g.members, route, first); err != nil {
		return nil, err
	}
	for i, m := range pg.members {
		last := m.tasks[len(m.tasks)-1]
		last.groupID, last.groupIndex = pg.id, i
	}
	return pg, nil
}

// planTaskOf resolves a signature's options against the workflow levels
// above it: its own options win; routing, priority, time limits and
// headers come from the nearest level that sets them; countdown, eta and
// expires only from the levels it is the first step of.
func (c *Client) planTaskOf(s *TaskSig, route, first layers) (*planTask, error) {
	if s == nil {
		return nil, errors.New("stalk: nil signature")
	}
	own := layerOf(s.opts)
	if err := own.checkCommon("a canvas step"); err != nil {
		return nil, err
	}
	if own.cfg.ignore {
		return nil, fmt.Errorf("stalk: task %s: IgnoreResult cannot be used in a canvas step", s.name)
	}
	cfg := own.cfg
	for _, l := range route {
		w := l.cfg
		if cfg.queue == "" && cfg.routingKey == "" && cfg.exchange == nil {
			cfg.queue, cfg.routingKey, cfg.exchange = w.queue, w.routingKey, w.exchange
		}
		if cfg.priority == nil {
			cfg.priority = w.priority
		}
		if cfg.hardLimit == nil {
			cfg.hardLimit = w.hardLimit
		}
		if cfg.softLimit == nil {
			cfg.softLimit = w.softLimit
		}
		for k, v := range w.headers {
			if _, ok := cfg.headers[k]; !ok {
				if cfg.headers == nil {
					cfg.headers = map[string]any{}
				}
				cfg.headers[k] = v
			}
		}
	}
	for _, l := range first {
		w := l.cfg
		if cfg.countdown == nil && cfg.eta.IsZero() {
			cfg.countdown, cfg.eta = w.countdown, w.eta
		}
		if cfg.expires.IsZero() {
			cfg.expires = w.expires
		}
	}
	if cfg.queue == "" && cfg.routingKey == "" && cfg.exchange == nil {
		cfg.queue = c.cfg.defaultQueue
	}
	return &planTask{sig: s, cfg: cfg}, nil
}

// outgoing is one message Apply publishes: the first task of a chain (or
// a lone task), with the rest of its chain embedded.
type outgoing struct {
	chain *planChain
	msg   *taskMessage
}

// freeze gives every task its id and builds the messages to publish.
// Every step is validated as a message, so that nothing is published when
// one of them is bad.
func (c *Client) freeze(p *plan) ([]outgoing, error) {
	tasks := p.allTasks()
	seen := make(map[string]bool, len(tasks))
	for _, t := range tasks {
		if t.cfg.taskID == "" {
			t.cfg.taskID = uuid.NewString()
		}
		if seen[t.cfg.taskID] {
			return nil, fmt.Errorf("stalk: task id %s is used twice in the canvas", t.cfg.taskID)
		}
		seen[t.cfg.taskID] = true
		if _, err := buildTask(t.sig.name, t.cfg, c.cfg.defaultQueue); err != nil {
			return nil, err
		}
	}
	var out []outgoing
	for _, ch := range p.chains {
		msg, err := c.chainMessage(ch)
		if err != nil {
			return nil, err
		}
		out = append(out, outgoing{chain: ch, msg: msg})
	}
	return out, nil
}

// send attaches every task, follows its reply queue, then publishes.
func (c *Client) send(ctx context.Context, p *plan, out []outgoing) (result.Result, error) {
	tasks := p.allTasks()
	// Attach every task as pending and make sure its reply queue exists and
	// is consumed, before the first publish.
	if err := c.prepare(ctx, tasks); err != nil {
		c.abandon(tasks)
		return nil, err
	}
	for i, o := range out {
		if err := c.pub.publish(ctx, o.msg.exchange, o.msg.routingKey, o.msg.queue, o.msg.pub); err != nil {
			var rest []*planTask
			for _, later := range out[i:] {
				rest = append(rest, chainTasks(later.chain)...)
			}
			c.abandon(rest)
			if i > 0 {
				return nil, fmt.Errorf("stalk: send canvas: %d of %d messages were sent before: %w", i, len(out), err)
			}
			return nil, fmt.Errorf("stalk: send canvas: %w", err)
		}
		c.publishSentEvent(ctx, o.msg)
	}
	// Link the results.
	link := func(ch *planChain) result.Result {
		var prev *result.AsyncResult
		for _, t := range ch.tasks {
			t.res = result.New(t.cfg.taskID, c, result.WithApp(c), result.WithTaskName(t.sig.name),
				result.WithEntry(t.entry), result.WithParent(prev))
			prev = t.res
		}
		if ch.tail == nil {
			return prev
		}
		return c.groupResult(ch.tail, prev)
	}
	if p.group != nil {
		members := make([]*result.AsyncResult, len(p.group.members))
		for i, m := range p.group.members {
			members[i] = link(m).(*result.AsyncResult)
		}
		return result.NewGroupResult(p.group.id, nil, members...), nil
	}
	return link(p.chains[0]), nil
}

func (c *Client) groupResult(g *planGroup, parent *result.AsyncResult) *result.GroupResult {
	members := make([]*result.AsyncResult, len(g.members))
	for i, m := range g.members {
		t := m.tasks[0]
		t.res = result.New(t.cfg.taskID, c, result.WithApp(c), result.WithTaskName(t.sig.name), result.WithEntry(t.entry))
		members[i] = t.res
	}
	return result.NewGroupResult(g.id, parent, members...)
}

func chainTasks(ch *planChain) []*planTask {
	out := append([]*planTask(nil), ch.tasks...)
	if ch.tail != nil {
		for _, m := range ch.tail.members {
			out = append(out, m.tasks...)
		}
	}
	return out
}

// chainMessage builds the message of a chain's first task, with the rest
// of the chain embedded in reverse.
func (c *Client) chainMessage(ch *planChain) (*taskMessage, error) {
	var rest []Signature
	if ch.tail != nil {
		rest = append(rest, c.groupSignature(ch.tail))
	}
	for i := len(ch.tasks) - 1; i >= 1; i-- {
		rest = append(rest, c.embedded(ch.tasks[i]))
	}
	first := ch.tasks[0]
	cfg := *first.cfg
	if len(ch.tasks) > 1 || ch.tail != nil {
		cfg.embed = Embed{Chain: rest}
	}
	if first.groupID != "" {
		cfg.groupID = first.groupID
		idx := first.groupIndex
		cfg.groupIndex = &idx
	}
	msg, err := buildTask(first.sig.name, &cfg, c.cfg.defaultQueue)
	if err != nil {
		return nil, err
	}
	msg.pub.ReplyTo = c.cons.queueName(cfg.taskID)
	return msg, nil
}

// embedded returns the signature the worker sends for a later chain step:
// frozen with its task id and reply queue, and routed explicitly.
func (c *Client) embedded(t *planTask) Signature {
	cfg := t.cfg
	o := map[string]any{
		"task_id":  cfg.taskID,
		"reply_to": c.cons.queueName(cfg.taskID),
	}
	if cfg.queue != "" {
		o["queue"] = cfg.queue
	}
	if cfg.routingKey != "" {
		o["routing_key"] = cfg.routingKey
	}
	if cfg.exchange != nil {
		o["exchange"] = *cfg.exchange
	}
	if cfg.priority != nil {
		o["priority"] = *cfg.priority
	}
	if cfg.hardLimit != nil {
		o["time_limit"] = *cfg.hardLimit
	}
	if cfg.softLimit != nil {
		o["soft_time_limit"] = *cfg.softLimit
	}
	if cfg.countdown != nil {
		o["countdown"] = cfg.countdown.Seconds()
	}
	if !cfg.eta.IsZero() {
		o["eta"] = isoTime(cfg.eta)
	}
	if !cfg.expires.IsZero() {
		// Celery reads a number as seconds from when the step is sent.
		o["expires"] = max(time.Until(cfg.expires).Seconds(), 0)
	}
	if cfg.shadow != "" {
		o["shadow"] = cfg.shadow
	}
	if len(cfg.headers) > 0 {
		o["headers"] = cfg.headers
	}
	if t.groupID != "" {
		o["group_id"] = t.groupID
		o["group_index"] = t.groupIndex
	}
	return Signature{Task: t.sig.name, Args: cfg.args, Kwargs: cfg.kwargs, Options: o, Immutable: t.sig.immutable}
}

// groupSignature is the embedded form of a group that ends a chain. The
// group's own options hold only its id: the worker passes them to every
// member, so a reply_to or queue there would override the members' own.
func (c *Client) groupSignature(g *planGroup) Signature {
	tasks := make([]Signature, len(g.members))
	for i, m := range g.members {
		tasks[i] = c.embedded(m.tasks[0])
	}
	typ := "group"
	return Signature{
		Task:        "celery.group",
		Args:        []any{},
		Kwargs:      map[string]any{"tasks": tasks},
		Options:     map[string]any{"task_id": g.id},
		SubtaskType: &typ,
	}
}

// prepare registers an entry for every task and follows its reply queue,
// a few at a time, returning once all are consumed.
func (c *Client) prepare(ctx context.Context, tasks []*planTask) error {
	now := time.Now()
	for _, t := range tasks {
		e := result.NewEntry(t.cfg.taskID)
		queue := t.cfg.routingKey
		if queue == "" {
			queue = t.cfg.queue
		}
		e.SetSendInfo(result.SendInfo{Name: t.sig.name, Args: t.cfg.args, Kwargs: t.cfg.kwargs, Queue: queue, Sent: now})
		c.cons.reg.register(e)
		t.entry = e
	}
	workers := min(8, len(tasks))
	if c.cfg.mode == Shared {
		workers = min(1, len(tasks))
	}
	next := make(chan *planTask)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range next {
				if err := c.cons.follow(ctx, t.entry); err != nil {
					errs <- fmt.Errorf("stalk: reply queue of task %s: %w", t.cfg.taskID, err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for _, t := range tasks {
		select {
		case next <- t:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// abandon forgets tasks that will not be published: their entries, and in
// per-task mode their reply queues.
func (c *Client) abandon(tasks []*planTask) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, t := range tasks {
		if t.entry == nil {
			continue
		}
		c.cons.reg.drop(t.cfg.taskID)
		_ = c.cons.forget(ctx, t.cfg.taskID)
	}
}
