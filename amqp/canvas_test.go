package amqp

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/result"
)

// canvasClient is a Client with no connections: enough to plan and freeze
// a canvas and look at the messages it would publish.
func canvasClient(t *testing.T, opts ...Option) *Client {
	t.Helper()
	cfg := defaultConfig()
	cfg.defaultQueue = "jobs"
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.mode == Shared && cfg.replyQueue == "" {
		cfg.replyQueue = "shared-reply"
	}
	require.NoError(t, cfg.validate())
	c := &Client{cfg: cfg}
	c.cons = newConsumer(&c.cfg, zerolog.Nop())
	return c
}

func frozen(t *testing.T, c *Client, cv Canvas, opts ...SendOption) (*plan, []outgoing) {
	t.Helper()
	p, err := c.makePlan(cv, opts)
	require.NoError(t, err)
	out, err := c.freeze(p)
	require.NoError(t, err)
	return p, out
}

type wireSig struct {
	Task        string         `json:"task"`
	Args        []any          `json:"args"`
	Kwargs      map[string]any `json:"kwargs"`
	Options     map[string]any `json:"options"`
	SubtaskType *string        `json:"subtask_type"`
	Immutable   bool           `json:"immutable"`
}

type wireEmbed struct {
	Callbacks any       `json:"callbacks"`
	Errbacks  any       `json:"errbacks"`
	Chain     []wireSig `json:"chain"`
	Chord     any       `json:"chord"`
}

func body(t *testing.T, m *taskMessage) ([]any, map[string]any, wireEmbed) {
	t.Helper()
	var parts [3]json.RawMessage
	require.NoError(t, json.Unmarshal(m.pub.Body, &parts))
	var args []any
	var kwargs map[string]any
	var embed wireEmbed
	require.NoError(t, json.Unmarshal(parts[0], &args))
	require.NoError(t, json.Unmarshal(parts[1], &kwargs))
	require.NoError(t, json.Unmarshal(parts[2], &embed))
	return args, kwargs, embed
}

func TestCanvasChainMessage(t *testing.T) {
	for _, mode := range []ReplyMode{PerTask, Shared} {
		t.Run(mode.String(), func(t *testing.T) {
			c := canvasClient(t, WithReplyMode(mode))
			ch := NewChain(Sig("tasks.add", Args(1, 2)), Sig("tasks.add", Args(10)), Si("tasks.add", Args(100, 1), Queue("other")))
			p, out := frozen(t, c, ch)
			require.Len(t, out, 1)
			tasks := p.chains[0].tasks
			require.Len(t, tasks, 3)
			m := out[0].msg
			assert.Equal(t, tasks[0].cfg.taskID, m.id)
			assert.Equal(t, c.cons.queueName(tasks[0].cfg.taskID), m.pub.ReplyTo)
			assert.Equal(t, "jobs", m.routingKey, "the first step goes to the client's default queue")
			assert.Nil(t, m.pub.Headers["group"])
			args, _, embed := body(t, m)
			assert.Equal(t, []any{1.0, 2.0}, args)
			require.Len(t, embed.Chain, 2, "the remaining steps")
			// Stored reversed: the worker pops the last.
			last, second := embed.Chain[0], embed.Chain[1]
			assert.Equal(t, tasks[1].cfg.taskID, second.Options["task_id"])
			assert.Equal(t, tasks[2].cfg.taskID, last.Options["task_id"])
			for i, s := range []wireSig{second, last} {
				id := tasks[i+1].cfg.taskID
				assert.Equal(t, "tasks.add", s.Task)
				assert.Equal(t, c.cons.queueName(id), s.Options["reply_to"], "each step carries its reply queue")
				assert.Nil(t, s.SubtaskType)
			}
			if mode == Shared {
				assert.Equal(t, "shared-reply", second.Options["reply_to"])
			} else {
				assert.Equal(t, c.cfg.replyPrefix+tasks[1].cfg.taskID, second.Options["reply_to"])
			}
			assert.Equal(t, "jobs", second.Options["queue"], "every step is routed to the chain's queue")
			assert.Equal(t, "other", last.Options["queue"], "unless it names its own")
			assert.False(t, second.Immutable)
			assert.True(t, last.Immutable)
			assert.Equal(t, []any{10.0}, second.Args)
			assert.Equal(t, map[string]any{}, second.Kwargs)
		})
	}
}

func TestCanvasChainOptions(t *testing.T) {
	c := canvasClient(t)
	ch := NewChain(Sig("a"), Sig("b", Priority(1)), NewChain(Sig("c"), Sig("d"))).
		Set(Queue("wf"), Priority(5), Countdown(time.Second), TimeLimit(30*time.Second), TaskID("last-id"))
	p, out := frozen(t, c, ch)
	tasks := p.chains[0].tasks
	require.Len(t, tasks, 4, "nested chains are flattened")
	m := out[0].msg
	assert.Equal(t, "wf", m.routingKey)
	assert.Equal(t, uint8(5), m.pub.Priority)
	assert.NotNil(t, m.pub.Headers["eta"], "countdown applies to the first step")
	_, _, embed := body(t, m)
	require.Len(t, embed.Chain, 3)
	d, cc, b := embed.Chain[0], embed.Chain[1], embed.Chain[2]
	assert.Equal(t, "last-id", d.Options["task_id"], "TaskID on a chain names its last step")
	assert.Equal(t, 1.0, b.Options["priority"], "a step's own option wins")
	assert.Equal(t, 5.0, cc.Options["priority"])
	assert.Equal(t, 30.0, cc.Options["time_limit"])
	assert.Nil(t, cc.Options["countdown"], "countdown does not repeat on later steps")
	for _, s := range embed.Chain {
		assert.Equal(t, "wf", s.Options["queue"])
	}
}

func TestCanvasGroupMessages(t *testing.T) {
	c := canvasClient(t)
	var members []Canvas
	for i := 0; i < 3; i++ {
		members = append(members, Sig("tasks.add", Args(i, i)))
	}
	members = append(members, NewChain(Sig("tasks.add", Args(1, 1)), Sig("tasks.mul", Args(3))))
	members = append(members, NewGroup(Sig("tasks.add", Args(9, 9)))) // flattened
	g := NewGroup(members...).Set(Queue("gq"), TaskID("gid"))
	p, out := frozen(t, c, g)
	require.NotNil(t, p.group)
	assert.Equal(t, "gid", p.group.id)
	require.Len(t, out, 5)
	for i, o := range out {
		assert.Equal(t, "gq", o.msg.routingKey)
		if i == 3 {
			// A member chain: its last step carries the group in options.
			assert.Nil(t, o.msg.pub.Headers["group"])
			_, _, embed := body(t, o.msg)
			require.Len(t, embed.Chain, 1)
			assert.Equal(t, "gid", embed.Chain[0].Options["group_id"])
			assert.Equal(t, 3.0, embed.Chain[0].Options["group_index"])
			continue
		}
		assert.Equal(t, "gid", o.msg.pub.Headers["group"])
		assert.Equal(t, int32(i), o.msg.pub.Headers["group_index"])
		_, _, embed := body(t, o.msg)
		assert.Nil(t, embed.Chain)
	}
}

func TestCanvasChainEndingWithGroup(t *testing.T) {
	c := canvasClient(t)
	ch := NewChain(Sig("tasks.add", Args(1, 2)), NewGroup(Sig("tasks.add", Args(10)), Sig("tasks.mul", Args(2))))
	p, out := frozen(t, c, ch)
	require.Len(t, out, 1)
	tail := p.chains[0].tail
	require.NotNil(t, tail)
	_, _, embed := body(t, out[0].msg)
	require.Len(t, embed.Chain, 1)
	gs := embed.Chain[0]
	assert.Equal(t, "celery.group", gs.Task)
	require.NotNil(t, gs.SubtaskType)
	assert.Equal(t, "group", *gs.SubtaskType)
	assert.Equal(t, map[string]any{"task_id": tail.id}, gs.Options, "no reply_to or queue: they would override the members'")
	tasks := gs.Kwargs["tasks"].([]any)
	require.Len(t, tasks, 2)
	for i, raw := range tasks {
		m := raw.(map[string]any)
		o := m["options"].(map[string]any)
		id := tail.members[i].tasks[0].cfg.taskID
		assert.Equal(t, id, o["task_id"])
		assert.Equal(t, c.cons.queueName(id), o["reply_to"])
		assert.Equal(t, "jobs", o["queue"])
		assert.Equal(t, tail.id, o["group_id"])
	}
}

func TestCanvasChords(t *testing.T) {
	c := canvasClient(t)
	_, err := c.Chord(t.Context(), []Canvas{Sig("a")}, Sig("b"))
	assert.ErrorIs(t, err, result.ErrNotSupported)
	assert.Contains(t, err.Error(), "chords are not supported by the rpc backend")
	_, err = c.makePlan(NewChain(NewGroup(Sig("a"), Sig("b")), Sig("c")), nil)
	assert.ErrorIs(t, err, result.ErrNotSupported, "a group followed by a step is a chord")
	_, err = c.makePlan(NewChain(Sig("x"), NewGroup(Sig("a")), Sig("c")), nil)
	assert.ErrorIs(t, err, result.ErrNotSupported)
	_, err = c.makePlan(NewChain(Sig("x"), NewGroup(NewChain(Sig("a"), Sig("b")))), nil)
	assert.ErrorIs(t, err, result.ErrNotSupported)
	_, err = c.makePlan(NewGroup(NewChain(Sig("x"), NewGroup(Sig("a")))), nil)
	assert.ErrorIs(t, err, result.ErrNotSupported)
}

func TestCanvasRejects(t *testing.T) {
	c := canvasClient(t)
	cases := map[string]struct {
		cv   Canvas
		opts []SendOption
	}{
		"empty chain":        {NewChain(), nil},
		"args on a chain":    {NewChain(Sig("a")), []SendOption{Args(1)}},
		"reply_to in a step": {NewChain(Sig("a", ReplyTo("x"))), nil},
		"group in a step":    {NewChain(Sig("a", Group("g", 0))), nil},
		"parent id":          {NewGroup(Sig("a", ParentID("p"))), nil},
		"ignore result":      {NewChain(Sig("a", IgnoreResult()), Sig("b")), nil},
		"nil step":           {NewChain(Sig("a"), nil), nil},
		"nil canvas":         {nil, nil},
		"empty name":         {NewChain(Sig(" ")), nil},
		"bad args":           {NewChain(Sig("a"), Sig("b", Args(func() {}))), nil},
		"duplicate ids":      {NewGroup(Sig("a", TaskID("x")), Sig("b", TaskID("x"))), nil},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p, err := c.makePlan(tc.cv, tc.opts)
			if err == nil {
				_, err = c.freeze(p)
			}
			assert.Error(t, err)
		})
	}
	_, err := c.Chain(t.Context(), Sig("a"), NewGroup(Sig("b")))
	assert.Error(t, err, "Chain refuses a chain ending with a group: use Apply")
	assert.False(t, errors.Is(err, result.ErrNotSupported))
}

func TestCanvasSigCopies(t *testing.T) {
	s := Sig("a", Args(1))
	s2 := s.Set(Queue("q")).SetImmutable(true)
	assert.False(t, s.Immutable())
	assert.True(t, s2.Immutable())
	assert.Len(t, s.opts, 1)
	assert.Len(t, s2.opts, 2)
	assert.Equal(t, "a", s2.Name())
}
