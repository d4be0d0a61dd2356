package result_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/stalk-dev/stalk/result"
)

// memBackend is a Backend that keeps entries in memory: a transport would
// deliver the decoded result messages to them.
type memBackend struct {
	mu      sync.Mutex
	entries map[string]*result.Entry
}

func (b *memBackend) Attach(id string) *result.Entry {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.entries == nil {
		b.entries = map[string]*result.Entry{}
	}
	if e := b.entries[id]; e != nil {
		return e
	}
	e := result.NewEntry(id)
	b.entries[id] = e
	return e
}

func (b *memBackend) Exists(_ context.Context, id string) (bool, error) {
	return b.Attach(id).Latest() != nil, nil
}

func (b *memBackend) Forget(_ context.Context, id string) error {
	b.mu.Lock()
	delete(b.entries, id)
	b.mu.Unlock()
	return nil
}

// deliver decodes a result message body as a Celery worker's rpc backend
// publishes it, and records it.
func (b *memBackend) deliver(body string) {
	m, err := result.DecodeMessage("application/json", "utf-8", []byte(body), result.DecodeOptions{})
	if err != nil {
		panic(err)
	}
	b.Attach(m.TaskID).Deliver(m)
}

// An AsyncResult reads its task's states from a backend; Get waits for the
// first ready one.
func Example() {
	b := &memBackend{}
	r := result.New("7f3c", b)
	fmt.Println(r.State())

	b.deliver(`{"task_id": "7f3c", "status": "STARTED", "result": {"pid": 9716, "hostname": "w1@vm"}, "traceback": null, "children": []}`)
	fmt.Println(r.State(), r.Worker())

	b.deliver(`{"task_id": "7f3c", "status": "SUCCESS", "result": 5, "traceback": null, "children": []}`)
	v, err := r.Get(context.Background())
	fmt.Println(v, err, r.Successful())
	// Output:
	// PENDING
	// STARTED w1@vm
	// 5 <nil> true
}

// A FAILURE comes back as a *TaskError, decoded from Celery's exception.
func ExampleTaskError() {
	b := &memBackend{}
	r := result.New("9a1e", b)
	b.deliver(`{"task_id": "9a1e", "status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["bad input"], "exc_module": "builtins"}, "traceback": "Traceback ...", "children": []}`)
	_, err := r.Get(context.Background())
	var te *result.TaskError
	if errors.As(err, &te) {
		fmt.Println(te.Type, te.Message(), errors.Is(err, result.ErrTaskFailed))
	}
	fmt.Println(err)
	// Output:
	// ValueError bad input true
	// task 9a1e FAILURE: ValueError: bad input
}

// A custom state's meta (update_state(state="PROGRESS", meta=...)) decodes
// into a type of your own.
func ExampleResultAs() {
	type progress struct {
		Current int `json:"current"`
		Total   int `json:"total"`
	}
	m, err := result.DecodeMeta([]byte(`{"task_id": "p1", "status": "PROGRESS", "result": {"current": 3, "total": 10}, "traceback": null, "children": []}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := result.ResultAs[progress](m)
	fmt.Printf("%s %d/%d %v\n", m.Status, p.Current, p.Total, err)
	// Output:
	// PROGRESS 3/10 <nil>
}

// Celery's result tuples travel between Python and Go: a chain's last
// step, with its parents.
func ExampleAsyncFromTuple() {
	py := `[["c", [["b", [["a", null], null]], null]], null]`
	r, err := result.AsyncFromTuple(py, &memBackend{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.ID(), r.Parent().ID(), r.AsList())
	back, _ := json.Marshal(r.AsTuple())
	fmt.Println(string(back))
	// Output:
	// c b [c b a]
	// [["c",[["b",[["a",null],null]],null]],null]
}
