package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
)

var graphSpec = cmdSpec{
	name:     "graph",
	synopsis: "graph ID [--wait] [--timeout D] [--plain]",
	about: `Print the dependency graph below task ID as DOT (Graphviz): the task, the
tasks it reported as children (the next step of a chain, the members of a
group, subtasks), their children, and so on, with an edge from each task to
each child.

Children are listed in a task's final state, so graph reads each task's
per-task reply queue as 'stalk result' does. Give the id of a chain's first
step to see the whole chain. A task that is not ready yet is drawn (in
yellow) without its children; with --wait, graph waits for every task first.
Nodes are labelled with their id and state, and coloured by state (red
FAILURE, grey REVOKED, yellow not ready); --plain draws Celery's default
style, labelled by id only.

Exit status: 0 success, 2 usage error, 3 --timeout passed with --wait, 4
broker unreachable, 1 when no result is stored for ID.`,
	examples: `
stalk graph 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f
stalk graph 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --wait --timeout 1m | dot -Tsvg > graph.svg`,
}

func runGraph(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet(graphSpec)
	wait := fs.Bool("wait", false, "wait until every task in the graph is ready")
	timeout := fs.Duration("timeout", 0, "with --wait: stop waiting after this `duration` and exit 3 (default: no limit)")
	plain := fs.Bool("plain", false, "Celery's default style: nodes labelled by id, not coloured by state")
	rf := addReplyFlags(fs)
	pos, err := a.parse(fs, graphSpec, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("give exactly one task ID, e.g. 'stalk graph 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f'")
	}
	if *timeout < 0 {
		return usagef("--timeout must not be negative")
	}
	if *timeout > 0 {
		*wait = true
	}
	id := pos[0]
	opts, err := rf.options()
	if err != nil {
		return err
	}
	c, err := a.dialClient(ctx, append(opts, amqp.WithReplyMode(amqp.PerTask))...)
	if err != nil {
		return err
	}
	defer c.Close()
	if !*wait {
		ok, err := c.AsyncResult(id).Exists(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("look up %s: %w", id, err)
		}
		if !ok {
			return fmt.Errorf("no result stored for %s: the task is unknown, not finished, or its result expired; use --wait to wait for it", id)
		}
	}
	wctx := ctx
	if *timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	root := c.AsyncResult(id)
	g, err := walkGraph(wctx, root, *wait)
	if err != nil {
		if errors.Is(err, result.ErrTimeout) && ctx.Err() == nil {
			fmt.Fprintf(a.stderr, "stalk graph: timed out after %s waiting for the tasks below %s\n", *timeout, id)
			return exitCode(exitTimeout)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return explainReplyErr(err)
	}
	f := result.DefaultFormatter()
	if !*plain {
		f.Label = nodeLabel
		f.NodeAttrs = result.StateAttrs
	}
	return g.WriteDOT(a.stdout, f)
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

// replyFlags are the reply-queue settings that must match the sender's
// for 'result' and 'graph' to attach to its per-task queues.
type replyFlags struct {
	expires time.Duration
	prefix  string
}

func addReplyFlags(fs interface {
	DurationVar(*time.Duration, string, time.Duration, string)
	StringVar(*string, string, string, string)
}) *replyFlags {
	rf := &replyFlags{}
	fs.DurationVar(&rf.expires, "result-expires", 24*time.Hour, "lifetime of unused per-task reply queues; must match the sender's (WithResultExpires)")
	fs.StringVar(&rf.prefix, "reply-prefix", "stalk.reply.", "name `prefix` of per-task reply queues; must match the sender's (WithReplyQueuePrefix)")
	return rf
}

func (rf *replyFlags) options() ([]amqp.Option, error) {
	if rf.expires < time.Second {
		return nil, usagef("--result-expires must be at least 1s")
	}
	if rf.prefix == "" {
		return nil, usagef("--reply-prefix must not be empty")
	}
	return []amqp.Option{amqp.WithResultExpires(rf.expires), amqp.WithReplyQueuePrefix(rf.prefix)}, nil
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
