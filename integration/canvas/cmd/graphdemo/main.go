// Command graphdemo renders the task graph of a chain that ends with a
// group, run on a real Celery worker, for the README:
//
//	go run ./integration/canvas/cmd/graphdemo -out docs
//
// It starts a worker on a queue of its own (tasks from
// integration/harness/celeryapp), sends
// chain(add(1, 2), add(10), group(add(100), mul(2), boom.si("oops"))), waits for
// every node, and writes graph.dot and, with graphviz's dot, graph.png.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
)

func main() {
	out := flag.String("out", "docs", "folder for graph.dot and graph.png")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "graphdemo:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := harness.Reachable(5 * time.Second); err != nil {
		return fmt.Errorf("RabbitMQ is not reachable: %w", err)
	}
	queue := harness.Name("graphdemo")
	w, err := harness.StartWorker(harness.WorkerConfig{Queue: queue})
	if err != nil {
		return err
	}
	defer w.Stop()
	c, err := amqp.Dial(ctx, harness.BrokerURL(), amqp.WithDefaultQueue(queue), amqp.WithReplyMode(amqp.Shared))
	if err != nil {
		return err
	}
	defer c.Close()

	add := func(args ...any) *amqp.TaskSig { return amqp.Sig("tasks.add", amqp.Args(args...)) }
	r, err := c.Apply(ctx, amqp.NewChain(
		add(1, 2),
		add(10),
		amqp.NewGroup(add(100), amqp.Sig("tasks.mul", amqp.Args(2)), amqp.Si("tasks.boom", amqp.Args("oops"))),
	))
	if err != nil {
		return err
	}
	root := r.Parent().Root()
	// Wait for every node; the failing member is part of the picture.
	for _, err := range root.Collect(ctx, false, result.Propagate(false)) {
		if err != nil {
			return err
		}
	}
	g, err := root.Graph()
	if err != nil {
		return err
	}
	f := result.DefaultFormatter()
	f.Label = label
	f.NodeAttrs = result.StateAttrs
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dotPath := filepath.Join(dir, "graph.dot")
	fh, err := os.Create(dotPath)
	if err != nil {
		return err
	}
	if err := g.WriteDOT(fh, f); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Close(); err != nil {
		return err
	}
	fmt.Println("wrote", dotPath)
	dot, err := exec.LookPath("dot")
	if err != nil {
		return errors.New("graphviz's dot is not installed: graph.png not rendered")
	}
	pngPath := filepath.Join(dir, "graph.png")
	if out, err := exec.Command(dot, "-Tpng", "-Gdpi=110", "-o", pngPath, dotPath).CombinedOutput(); err != nil {
		return fmt.Errorf("dot: %w: %s", err, out)
	}
	fmt.Println("wrote", pngPath)
	return nil
}

// label names a node by what ran and how it ended, with a short id.
func label(n result.Result) string {
	short := n.ID()[:8]
	switch x := n.(type) {
	case *result.GroupResult:
		return fmt.Sprintf("group %s\n%d tasks, %d succeeded", short, x.Len(), x.CompletedCount())
	case *result.AsyncResult:
		args := make([]string, len(x.Args()))
		for i, a := range x.Args() {
			args[i] = fmt.Sprintf("%#v", a)
		}
		call := fmt.Sprintf("%s(%s)", strings.TrimPrefix(x.Name(), "tasks."), strings.Join(args, ", "))
		outcome := fmt.Sprint("= ", x.Result())
		if te := x.MaybeThrow(); te != nil {
			var e *result.TaskError
			if errors.As(te, &e) {
				outcome = fmt.Sprintf("%s: %s", e.Type, e.Message())
			}
		}
		return fmt.Sprintf("%s %s\n%s\n%s", short, x.State(), call, outcome)
	}
	return short
}
