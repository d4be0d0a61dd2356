package main

import "context"

var graphSpec = cmdSpec{
	name:     "graph",
	synopsis: "graph ID",
	about:    `Print the dependency graph of task ID and its children as DOT.`,
	examples: `stalk graph 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f | dot -Tsvg > graph.svg`,
}

func runGraph(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet(graphSpec)
	if _, err := a.parse(fs, graphSpec, args); err != nil {
		return err
	}
	return usagef("graph is not available yet")
}
