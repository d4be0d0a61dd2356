package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/spf13/cobra"

	"github.com/stalk-dev/stalk/result"
)

func (a *app) graphCommand() *cobra.Command {
	var (
		wait, plain, keep bool
		timeout           time.Duration
		rf                replyFlags
	)
	cmd := &cobra.Command{
		Use:   "graph ID [flags]",
		Short: "Print a task's dependency graph as DOT, or JSON with --json",
		Long: `Print the dependency graph below task ID as DOT (Graphviz): the task, the
tasks it reported as children (the next step of a chain, the members of a
group, subtasks), their children, and so on, with an edge from each task to
each child. With --json it prints one JSON object instead: {"root": ID,
"nodes": [{"id", "kind", "name", "state"}...], "edges": [{"from", "to"}...]}.

Children are listed in a task's final state, so graph reads each task's
per-task reply queue as 'stalk result' does, and deletes the queues it read
unless --keep. Give the id of a chain's first step to see the whole chain
('stalk chain ... --no-wait' prints it). A task that is not ready yet is drawn
(in yellow) without its children; with --wait, graph waits for every task
first. Nodes are labelled with their id and state, and coloured by state (red
FAILURE, grey REVOKED, yellow not ready); --plain draws Celery's default
style, labelled by id only.

Exit status: 0 success, 1 when no result is stored for ID, 2 usage error, 3
--timeout passed with --wait, 4 broker unreachable.`,
		Example: `  stalk graph 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f
  stalk graph 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --wait -t 60 | dot -Tsvg > graph.svg
  stalk -j graph 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f | jq '.edges[]'`,
		Args:              exactlyOneID("graph"),
		ValidArgsFunction: noFileCompletion,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			if timeout > 0 {
				wait = true
			}
			return a.runGraph(cmd.Context(), args[0], wait, plain, keep, timeout, &rf)
		}),
	}
	fs := cmd.Flags()
	fs.BoolVarP(&wait, "wait", "w", false, "wait until every task in the graph is ready")
	secondsFlag(fs, &timeout, "timeout", "t", 0, "with --wait: stop waiting after this many `seconds` and exit 3 (implies --wait)")
	fs.BoolVar(&plain, "plain", false, "Celery's default style: nodes labelled by id, not coloured by state")
	fs.BoolVar(&keep, "keep", false, "keep the results on the broker after printing them (default: delete the reply queues read)")
	a.addReplyFlags(fs, &rf)
	return cmd
}

func (a *app) runGraph(ctx context.Context, id string, wait, plain, keep bool, timeout time.Duration, rf *replyFlags) error {
	c, qi, err := a.lookUpReply(ctx, id, rf)
	if err != nil {
		return err
	}
	defer c.Close()
	if !qi.Exists {
		return fmt.Errorf("no result stored for %s: there is no reply queue %s, so the id is unknown, or its result expired or was deleted after it was read", id, c.ReplyQueue(id))
	}
	wctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	root := c.AsyncResult(id)
	g, err := walkGraph(wctx, root, wait)
	if err != nil {
		if errors.Is(err, result.ErrTimeout) && ctx.Err() == nil {
			return &timeoutError{id: id, msg: fmt.Sprintf("timed out after %s waiting for the tasks below %s", fmtDuration(timeout), id)}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return explainReplyErr(err)
	}
	if a.g.json {
		a.jsonLine(graphJSON(g))
	} else {
		f := result.DefaultFormatter()
		if !plain {
			f.Label = nodeLabel
			f.NodeAttrs = result.StateAttrs
		}
		if err := g.WriteDOT(a.stdout, f); err != nil {
			return err
		}
	}
	if !keep {
		nodes := g.Nodes()
		for _, e := range g.Edges() {
			nodes = append(nodes, e.To)
		}
		for _, n := range nodes {
			if r, ok := n.(*result.AsyncResult); ok && r.Ready() {
				_ = r.Forget(ctx)
			}
		}
	}
	return nil
}

// jsonGraph is graph's --json object.
type jsonGraph struct {
	Root  string     `json:"root"`
	Nodes []jsonNode `json:"nodes"`
	Edges []jsonEdge `json:"edges"`
}

type jsonNode struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"` // "task" or "group"
	Name  string `json:"name,omitempty"`
	State string `json:"state"`
}

type jsonEdge struct {
	From string `json:"from"`
	To   string `json:"to"`
}

func graphJSON(g *result.Graph) jsonGraph {
	out := jsonGraph{Nodes: []jsonNode{}, Edges: []jsonEdge{}}
	if r := g.Root(); r != nil {
		out.Root = r.ID()
	}
	seen := map[string]bool{}
	add := func(n result.Result) {
		if seen[n.ID()] {
			return
		}
		seen[n.ID()] = true
		switch x := n.(type) {
		case *result.AsyncResult:
			out.Nodes = append(out.Nodes, jsonNode{ID: x.ID(), Kind: "task", Name: x.Name(), State: string(x.State())})
		case *result.GroupResult:
			st := "PENDING"
			if x.Ready() {
				st = "READY"
			}
			out.Nodes = append(out.Nodes, jsonNode{ID: x.ID(), Kind: "group", State: st})
		default:
			out.Nodes = append(out.Nodes, jsonNode{ID: n.ID(), Kind: "task"})
		}
	}
	for _, n := range g.Nodes() {
		add(n)
	}
	for _, e := range g.Edges() {
		add(e.To)
		out.Edges = append(out.Edges, jsonEdge{From: e.From.ID(), To: e.To.ID()})
	}
	return out
}

// walkGraph builds the graph below root as Celery's build_graph does, but
// reads each node first: with wait, until it is ready; otherwise for a
// moment, long enough to read a stored final state. A node that is not
// ready is kept without its children.
func walkGraph(ctx context.Context, root result.Result, wait bool) (*result.Graph, error) {
	g := result.NewGraph(root)
	type dep struct{ parent, node result.Result }
	queue := []dep{{nil, root}}
	seen := map[string]bool{}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if d.parent != nil {
			g.AddEdge(d.parent, d.node)
		} else {
			g.AddNode(d.node)
		}
		if seen[d.node.ID()] {
			continue
		}
		seen[d.node.ID()] = true
		get := []result.GetOption{result.Propagate(false)}
		if !wait {
			get = append(get, result.Timeout(peekWait))
		}
		if _, err := d.node.Get(ctx, get...); err != nil {
			if !wait && errors.Is(err, result.ErrTimeout) && ctx.Err() == nil {
				continue // not ready: drawn without children
			}
			if wait && errors.Is(err, result.ErrTimeout) {
				return nil, err
			}
			if errors.Is(err, result.ErrTaskFailed) || errors.Is(err, result.ErrRevoked) {
				// A group's failed member: the group is ready all the same.
			} else if ctx.Err() != nil {
				return nil, err
			} else {
				return nil, fmt.Errorf("read %s: %w", d.node.ID(), err)
			}
		}
		if !d.node.Ready() {
			continue
		}
		for _, c := range d.node.Children() {
			queue = append(queue, dep{d.node, c})
		}
	}
	return g, nil
}

// nodeLabel names a node by id and state, and by name when it is known.
func nodeLabel(n result.Result) string {
	switch x := n.(type) {
	case *result.AsyncResult:
		var b strings.Builder
		if name := x.Name(); name != "" {
			b.WriteString(name + "\n")
		}
		b.WriteString(x.ID() + "\n" + string(x.State()))
		return b.String()
	case *result.GroupResult:
		state := "PENDING"
		if x.Ready() {
			state = "READY"
		}
		return fmt.Sprintf("group %s\n%d tasks, %s", x.ID(), x.Len(), state)
	}
	return n.ID()
}

// explainReplyErr adds what to do when a reply queue exists with other
// arguments than ours.
func explainReplyErr(err error) error {
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.PreconditionFailed {
		return fmt.Errorf("%w; the reply queue was declared with other arguments, most likely another lifetime: pass the sender's --result-expires", err)
	}
	return err
}
