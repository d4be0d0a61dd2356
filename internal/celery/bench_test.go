package celery

import (
	"testing"

	"github.com/google/uuid"
)

// The work a Send does before the publish: planning a single task and
// building its message.
func BenchmarkPlanFreezeTask(b *testing.B) {
	pl := Planner{DefaultQueue: "celery", NewID: uuid.NewString}
	reply := func(string) string { return "stalk.reply.shared" }
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p, err := pl.Plan(&Node{Kind: TaskNode, Name: "tasks.echo", Opts: []Option{func(c *Call) { c.Args = []any{i} }}}, nil, true)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pl.Freeze(p, reply); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuild(b *testing.B) {
	c := &Call{TaskID: uuid.NewString(), Queue: "celery", Args: []any{1, "two", 3.0}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build("tasks.echo", c, "stalk.reply.shared"); err != nil {
			b.Fatal(err)
		}
	}
}
