package amqp

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/internal/celery"
	"github.com/stalk-dev/stalk/result"
)

// canvasClient is a Client with no connections: enough to plan and freeze
// a canvas and look at the messages it would publish.
func canvasClient(t *testing.T, opts ...Option) *Client {
	t.Helper()
	cfg := defaultConfig()
	cfg.topo.DefaultQueue = "jobs"
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.mode == Shared && cfg.replyQueue == "" {
		cfg.replyQueue = "shared-reply"
	}
	require.NoError(t, cfg.validate())
	c := &Client{cfg: cfg}
	c.planner = celery.Planner{DefaultQueue: cfg.topo.DefaultQueue, NewID: func() string { return "id-" + time.Now().Format("150405.000000000") }}
	c.cons = newConsumer(&c.cfg, zerolog.Nop())
	return c
}

func plan(c *Client, cv Canvas, opts []SendOption) (*celery.Plan, error) {
	if cv == nil {
		return nil, errors.New("nil canvas")
	}
	return c.planner.Plan(cv.node(), opts, false)
}

func frozen(t *testing.T, c *Client, cv Canvas, opts ...SendOption) *celery.Frozen {
	t.Helper()
	p, err := plan(c, cv, opts)
	require.NoError(t, err)
	fr, err := c.planner.Freeze(p, c.cons.mode.queueFor)
	require.NoError(t, err)
	return fr
}

// routeKey is where the client would publish task t: the routing key of
// its route (the queue, for a direct exchange).
func routeKey(t *testing.T, c *Client, call *celery.Call) string {
	t.Helper()
	q, err := c.cfg.topo.Resolve(call.Queue)
	require.NoError(t, err)
	return celery.RouteFor(q, call.Exchange, call.RoutingKey).Key
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

func body(t *testing.T, m *celery.Message) ([]any, map[string]any, wireEmbed) {
	t.Helper()
	var parts [3]json.RawMessage
	require.NoError(t, json.Unmarshal(m.Body, &parts))
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
			fr := frozen(t, c, ch)
			require.Len(t, fr.Messages, 1)
			tasks := fr.Chains[0].Tasks
			require.Len(t, tasks, 3)
			m := fr.Messages[0]
			assert.Equal(t, tasks[0].Call.TaskID, m.ID)
			assert.Equal(t, c.ReplyQueue(tasks[0].Call.TaskID), m.ReplyTo)
			assert.Equal(t, "jobs", routeKey(t, c, fr.First[0].Call), "the first step goes to the client's default queue")
			assert.Nil(t, m.Headers["group"])
			args, _, embed := body(t, m)
			assert.Equal(t, []any{1.0, 2.0}, args)
			require.Len(t, embed.Chain, 2, "the remaining steps")
			// Stored reversed: the worker pops the last.
			last, second := embed.Chain[0], embed.Chain[1]
			assert.Equal(t, tasks[1].Call.TaskID, second.Options["task_id"])
			assert.Equal(t, tasks[2].Call.TaskID, last.Options["task_id"])
			for i, s := range []wireSig{second, last} {
				id := tasks[i+1].Call.TaskID
				assert.Equal(t, "tasks.add", s.Task)
				assert.Equal(t, c.ReplyQueue(id), s.Options["reply_to"], "each step carries its reply queue")
				assert.Nil(t, s.SubtaskType)
			}
			if mode == Shared {
				assert.Equal(t, "shared-reply", second.Options["reply_to"])
			} else {
				assert.Equal(t, c.cfg.replyPrefix+tasks[1].Call.TaskID, second.Options["reply_to"])
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
	fr := frozen(t, c, ch)
	tasks := fr.Chains[0].Tasks
	require.Len(t, tasks, 4, "nested chains are flattened")
	m := fr.Messages[0]
	assert.Equal(t, "wf", routeKey(t, c, fr.First[0].Call))
	assert.Equal(t, uint8(5), m.Priority)
	assert.NotNil(t, m.Headers["eta"], "countdown applies to the first step")
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
	fr := frozen(t, c, g)
	require.NotNil(t, fr.Group)
	assert.Equal(t, "gid", fr.Group.ID)
	require.Len(t, fr.Messages, 5)
	for i, m := range fr.Messages {
		assert.Equal(t, "gq", routeKey(t, c, fr.First[i].Call))
		if i == 3 {
			// A member chain: its last step carries the group in options.
			assert.Nil(t, m.Headers["group"])
			_, _, embed := body(t, m)
			require.Len(t, embed.Chain, 1)
			assert.Equal(t, "gid", embed.Chain[0].Options["group_id"])
			assert.Equal(t, 3.0, embed.Chain[0].Options["group_index"])
			continue
		}
		assert.Equal(t, "gid", m.Headers["group"])
		assert.Equal(t, int32(i), m.Headers["group_index"])
		_, _, embed := body(t, m)
		assert.Nil(t, embed.Chain)
	}
}

func TestCanvasChainEndingWithGroup(t *testing.T) {
	c := canvasClient(t)
	ch := NewChain(Sig("tasks.add", Args(1, 2)), NewGroup(Sig("tasks.add", Args(10)), Sig("tasks.mul", Args(2))))
	fr := frozen(t, c, ch)
	require.Len(t, fr.Messages, 1)
	tail := fr.Chains[0].Tail
	require.NotNil(t, tail)
	_, _, embed := body(t, fr.Messages[0])
	require.Len(t, embed.Chain, 1)
	gs := embed.Chain[0]
	assert.Equal(t, "celery.group", gs.Task)
	require.NotNil(t, gs.SubtaskType)
	assert.Equal(t, "group", *gs.SubtaskType)
	assert.Equal(t, map[string]any{"task_id": tail.ID}, gs.Options, "no reply_to or queue: they would override the members'")
	tasks := gs.Kwargs["tasks"].([]any)
	require.Len(t, tasks, 2)
	for i, raw := range tasks {
		m := raw.(map[string]any)
		o := m["options"].(map[string]any)
		id := tail.Members[i].Tasks[0].Call.TaskID
		assert.Equal(t, id, o["task_id"])
		assert.Equal(t, c.ReplyQueue(id), o["reply_to"])
		assert.Equal(t, "jobs", o["queue"])
		assert.Equal(t, tail.ID, o["group_id"])
	}
}

func TestCanvasChords(t *testing.T) {
	c := canvasClient(t)
	_, err := c.Chord(t.Context(), []Canvas{Sig("a")}, Sig("b"))
	assert.ErrorIs(t, err, result.ErrNotSupported)
	assert.Contains(t, err.Error(), "chords are not supported by the rpc backend")
	_, err = plan(c, NewChain(NewGroup(Sig("a"), Sig("b")), Sig("c")), nil)
	assert.ErrorIs(t, err, result.ErrNotSupported, "a group followed by a step is a chord")
	_, err = plan(c, NewChain(Sig("x"), NewGroup(Sig("a")), Sig("c")), nil)
	assert.ErrorIs(t, err, result.ErrNotSupported)
	_, err = plan(c, NewChain(Sig("x"), NewGroup(NewChain(Sig("a"), Sig("b")))), nil)
	assert.ErrorIs(t, err, result.ErrNotSupported)
	_, err = plan(c, NewGroup(NewChain(Sig("x"), NewGroup(Sig("a")))), nil)
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
			p, err := plan(c, tc.cv, tc.opts)
			if err == nil {
				_, err = c.planner.Freeze(p, c.cons.mode.queueFor)
			}
			assert.Error(t, err)
		})
	}
	_, err := c.Chain(t.Context(), NewChain(Sig("a"), NewGroup(Sig("b"))))
	assert.Error(t, err, "Chain refuses a chain ending with a group: use ChainGroup")
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
