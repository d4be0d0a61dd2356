package result

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
)

// Graph is a task dependency graph (Celery's DependencyGraph), built by
// BuildGraph: one node per result, in the order the walk met them, and an
// edge from each node to each of its children. A Graph is not modified
// after it is built and is safe for concurrent reads.
type Graph struct {
	root  Result
	nodes []Result
	adj   map[string][]Result // by node id
	index map[string]Result
}

// Edge is a parent → child edge of a Graph.
type Edge struct{ From, To Result }

// BuildGraph walks the graph below r as IterDeps does and returns it
// (Celery's build_graph). Without intermediate, a node that is not ready
// makes it fail with an error wrapping ErrIncompleteStream. It does not
// wait; Collect first to wait for the whole graph.
func (r *AsyncResult) BuildGraph(ctx context.Context, intermediate bool) (*Graph, error) {
	return buildGraph(ctx, r, intermediate)
}

// Graph returns the graph below r, built once with BuildGraph and then
// cached (Celery's graph property). It does not wait: an incomplete graph
// is an error wrapping ErrIncompleteStream, and is not cached.
func (r *AsyncResult) Graph() (*Graph, error) {
	r.mu.Lock()
	g := r.graph
	r.mu.Unlock()
	if g != nil {
		return g, nil
	}
	g, err := r.BuildGraph(context.Background(), false)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.graph == nil {
		r.graph = g
	}
	return r.graph, nil
}

// BuildGraph returns the graph below the group: the group and its members.
func (g *GroupResult) BuildGraph(ctx context.Context, intermediate bool) (*Graph, error) {
	return buildGraph(ctx, g, intermediate)
}

func buildGraph(ctx context.Context, root Result, intermediate bool) (*Graph, error) {
	g := NewGraph(root)
	for d, err := range iterDeps(ctx, root, intermediate, false, nil) {
		if err != nil {
			return nil, err
		}
		g.AddNode(d.Node)
		if d.Parent != nil {
			g.AddEdge(d.Parent, d.Node)
		}
	}
	return g, nil
}

// NewGraph returns an empty graph whose root (named in its DOT output) is
// root, which may be nil. Use AddNode and AddEdge to fill it.
func NewGraph(root Result) *Graph {
	return &Graph{root: root, adj: map[string][]Result{}, index: map[string]Result{}}
}

// AddNode adds n unless a node with its id is present (Celery's add_arc).
func (g *Graph) AddNode(n Result) {
	if _, ok := g.index[n.ID()]; ok {
		return
	}
	g.index[n.ID()] = n
	g.nodes = append(g.nodes, n)
}

// AddEdge adds an edge from → to, adding from if needed (Celery's
// add_edge).
func (g *Graph) AddEdge(from, to Result) {
	g.AddNode(from)
	g.adj[from.ID()] = append(g.adj[from.ID()], to)
}

// Root returns the node the graph was built from.
func (g *Graph) Root() Result { return g.root }

// Nodes returns the nodes in the order they were added.
func (g *Graph) Nodes() []Result { return append([]Result(nil), g.nodes...) }

// Len returns the number of nodes.
func (g *Graph) Len() int { return len(g.nodes) }

// Node returns the node with the given id.
func (g *Graph) Node(id string) (Result, bool) {
	n, ok := g.index[id]
	return n, ok
}

// Adjacent returns n's children in the graph.
func (g *Graph) Adjacent(n Result) []Result { return append([]Result(nil), g.adj[n.ID()]...) }

// Edges returns every edge, grouped by source node in node order.
func (g *Graph) Edges() []Edge {
	var out []Edge
	for _, n := range g.nodes {
		for _, c := range g.adj[n.ID()] {
			out = append(out, Edge{n, c})
		}
	}
	return out
}

// ValencyOf returns the number of nodes reachable from n, counting n
// (Celery's valency_of).
func (g *Graph) ValencyOf(n Result) int {
	seen := map[string]bool{}
	var walk func(Result) int
	walk = func(x Result) int {
		if seen[x.ID()] {
			return 0
		}
		seen[x.ID()] = true
		c := 1
		for _, y := range g.adj[x.ID()] {
			c += walk(y)
		}
		return c
	}
	return walk(n)
}

// Topsort returns the nodes so that every node comes before its children.
func (g *Graph) Topsort() []Result {
	indeg := map[string]int{}
	for _, e := range g.Edges() {
		indeg[e.To.ID()]++
	}
	var queue, out []Result
	for _, n := range g.nodes {
		if indeg[n.ID()] == 0 {
			queue = append(queue, n)
		}
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		out = append(out, n)
		for _, c := range g.adj[n.ID()] {
			indeg[c.ID()]--
			if indeg[c.ID()] == 0 {
				queue = append(queue, c)
			}
		}
	}
	return out
}

// Attr is one DOT attribute. Attribute lists keep their order, as Celery's
// formatter does.
type Attr struct{ Name, Value string }

// GraphFormatter controls WriteDOT's output (Celery's GraphFormatter). The
// zero value is usable; DefaultFormatter returns Celery's defaults.
type GraphFormatter struct {
	// ID is the graph's name. Default: "dependencies".
	ID string
	// Type is "digraph" (default) or "graph".
	Type string
	// Scheme holds attributes applied to the graph, every node and every
	// edge; GraphScheme, NodeScheme, TermScheme (nodes without children)
	// and EdgeScheme add to it, later values winning.
	Scheme, GraphScheme, NodeScheme, TermScheme, EdgeScheme []Attr
	// Label names a node. Default: its id.
	Label func(Result) string
	// NodeAttrs adds attributes to one node, e.g. a colour by state. May be
	// nil.
	NodeAttrs func(Result) []Attr
}

// DefaultFormatter returns Celery's default formatter for a result graph:
// oval filled nodes in shades of green, on a mint background.
func DefaultFormatter() *GraphFormatter {
	return &GraphFormatter{
		ID:          "dependencies",
		Type:        "digraph",
		Scheme:      []Attr{{"shape", "oval"}, {"arrowhead", "vee"}, {"style", "filled"}, {"fontname", "HelveticaNeue"}},
		GraphScheme: []Attr{{"bgcolor", "mintcream"}},
		NodeScheme:  []Attr{{"fillcolor", "palegreen3"}, {"color", "palegreen4"}},
		TermScheme:  []Attr{{"fillcolor", "palegreen1"}, {"color", "palegreen2"}},
		EdgeScheme:  []Attr{{"color", "darkseagreen4"}, {"arrowcolor", "black"}, {"arrowsize", "0.7"}},
	}
}

// StateAttrs colours a node by its state, for GraphFormatter.NodeAttrs:
// red for FAILURE, grey for REVOKED, light yellow while not ready.
func StateAttrs(n Result) []Attr {
	switch {
	case n.Failed():
		return []Attr{{"fillcolor", "lightpink"}, {"color", "red3"}}
	case n.Ready() && !n.Successful():
		return []Attr{{"fillcolor", "gray85"}, {"color", "gray40"}}
	case !n.Ready():
		return []Attr{{"fillcolor", "lightyellow"}, {"color", "goldenrod"}}
	}
	return nil
}

// merge returns the attributes of all lists, each name once at its first
// position, with the last value given.
func merge(lists ...[]Attr) []Attr {
	var out []Attr
	pos := map[string]int{}
	for _, l := range lists {
		for _, a := range l {
			if i, ok := pos[a.Name]; ok {
				out[i].Value = a.Value
				continue
			}
			pos[a.Name] = len(out)
			out = append(out, a)
		}
	}
	return out
}

func dotQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", "")
	return `"` + r.Replace(s) + `"`
}

func attrList(attrs []Attr) string {
	parts := make([]string, len(attrs))
	for i, a := range attrs {
		parts[i] = a.Name + "=" + dotQuote(a.Value)
	}
	return strings.Join(parts, ", ")
}

// WriteDOT writes the graph in Graphviz's DOT language, in the shape
// Celery's DependencyGraph.to_dot writes: a graph attribute line naming the
// root, each node once (terminal nodes in their own colours), then its
// edges. f may be nil for DefaultFormatter(). Render it with
// `dot -Tpng graph.dot -o graph.png`.
func (g *Graph) WriteDOT(w io.Writer, f *GraphFormatter) error {
	if f == nil {
		f = DefaultFormatter()
	}
	id, typ := f.ID, f.Type
	if id == "" {
		id = "dependencies"
	}
	dir := "->"
	switch typ {
	case "", "digraph":
		typ = "digraph"
	case "graph":
		dir = "--"
	default:
		return fmt.Errorf("stalk: graph type %q: want digraph or graph", typ)
	}
	label := func(n Result) string {
		if f.Label != nil {
			return f.Label(n)
		}
		return n.ID()
	}
	nodeAttrs := func(n Result, scheme []Attr) []Attr {
		var extra []Attr
		if f.NodeAttrs != nil {
			extra = f.NodeAttrs(n)
		}
		return merge(f.Scheme, scheme, extra)
	}
	bw := bufio.NewWriter(w)
	root := ""
	if g.root != nil {
		root = label(g.root)
	}
	fmt.Fprintf(bw, "%s %s {\n", typ, id)
	fmt.Fprintf(bw, "    graph [%s]\n", attrList(merge(f.Scheme, f.GraphScheme, []Attr{{"root", root}})))
	seen := map[string]bool{}
	node := func(n Result, scheme []Attr) {
		l := label(n)
		if seen[l] {
			return
		}
		seen[l] = true
		fmt.Fprintf(bw, "    %s [%s]\n", dotQuote(l), attrList(nodeAttrs(n, scheme)))
	}
	for _, n := range g.nodes {
		adj := g.adj[n.ID()]
		if len(adj) == 0 {
			node(n, f.TermScheme)
		}
		for _, c := range adj {
			node(n, f.NodeScheme)
			fmt.Fprintf(bw, "    %s %s %s [%s]\n", dotQuote(label(n)), dir, dotQuote(label(c)), attrList(merge(f.Scheme, f.EdgeScheme)))
		}
	}
	fmt.Fprintln(bw, "}")
	return bw.Flush()
}

// String returns the graph as DOT with the default formatter.
func (g *Graph) String() string {
	var b strings.Builder
	_ = g.WriteDOT(&b, nil)
	return b.String()
}
