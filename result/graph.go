package result

// Graph is a task dependency graph (Celery's DependencyGraph). It is built
// by BuildGraph.
type Graph struct {
	// Nodes in insertion order, and the edges parent → child.
	Nodes []*AsyncResult
	Edges map[string][]string
}
