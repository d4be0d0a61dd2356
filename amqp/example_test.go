package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

// Send a task to a Celery worker and wait for its result under a deadline.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := amqp.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	r, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3))
	if err != nil {
		fmt.Println(err)
		return
	}
	v, err := r.Get(ctx)
	var te *result.TaskError
	switch {
	case errors.As(err, &te):
		fmt.Println("task failed:", te.Type, te.Message())
	case errors.Is(err, result.ErrTimeout):
		fmt.Println("no result in time")
	case err != nil:
		fmt.Println(err)
	default:
		fmt.Println(v) // 5
	}
}

// Follow a task's progress: every state arrives through OnMessage, in order,
// and a custom state's meta decodes into a type of your own.
func ExampleClient_Send_progress() {
	ctx := context.Background()
	c, err := amqp.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		return
	}
	defer c.Close()
	r, err := c.Send(ctx, "tasks.progress", amqp.Args(10))
	if err != nil {
		return
	}
	type progress struct {
		Current int `json:"current"`
		Total   int `json:"total"`
	}
	_, _ = r.Get(ctx, result.OnMessage(func(m result.Meta) {
		if m.Status == "PROGRESS" {
			if p, err := result.ResultAs[progress](&m); err == nil {
				fmt.Printf("%d/%d\n", p.Current, p.Total)
			}
		}
	}))
}

// Fan out, then take the results as they complete.
func ExampleClient_Send_fanOut() {
	ctx := context.Background()
	c, err := amqp.Dial(ctx, "amqp://guest:guest@localhost:5672/", amqp.WithReplyMode(amqp.Shared))
	if err != nil {
		return
	}
	defer c.Close()
	done := make(chan any)
	for i := 0; i < 100; i++ {
		r, err := c.Send(ctx, "tasks.add", amqp.Args(i, i))
		if err != nil {
			return
		}
		r.Then(func(v any) { done <- v }, func(err error) { done <- err })
	}
	for i := 0; i < 100; i++ {
		fmt.Println(<-done)
	}
}

// Cancel a running task and read the workers' replies.
func ExampleClient_AsyncResult_revoke() {
	ctx := context.Background()
	c, err := amqp.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		return
	}
	defer c.Close()
	r := c.AsyncResult("4d8b90f6-67b2-4575-bc40-176154fab8fd")
	replies, err := r.Revoke(ctx, revoke.Terminate(), revoke.Wait(time.Second))
	for _, rep := range replies {
		fmt.Println(rep.Worker, rep.OK, rep.Err())
	}
}

// A fleet of Celery 5.5+ workers on quorum queues: tell the client the
// queues as the workers declare them (Celery's task_queues), and it routes
// and declares as they do. Countdowns to a quorum queue on a topic exchange
// go through native delayed delivery.
func ExampleWithTaskQueues() {
	ctx := context.Background()
	c, err := amqp.Dial(ctx, "amqp://guest:guest@localhost:5672/",
		amqp.WithTaskQueues(amqp.TaskQueue{
			Name: "reports", Exchange: "reports", ExchangeType: amqp.TopicExchange,
			RoutingKey: "reports.render", Type: amqp.Quorum,
		}),
		amqp.WithDefaultQueueType(amqp.Quorum), // task_default_queue_type = "quorum"
		amqp.WithReplyMode(amqp.Shared),
	)
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Send(ctx, "reports.render", amqp.Queue("reports"), amqp.Countdown(10*time.Second))
}

// Options are checked before anything connects: bad or conflicting ones
// fail Dial with ErrInvalidOption.
func ExampleDial_invalidOptions() {
	_, err := amqp.Dial(context.Background(), "amqp://guest:guest@localhost:5672/",
		amqp.WithReplyMode(amqp.PerTask), amqp.WithReplyQueue("orders-api-1"))
	fmt.Println(errors.Is(err, amqp.ErrInvalidOption))
	fmt.Println(err)

	_, err = amqp.Dial(context.Background(), "amqp://guest:guest@localhost:5672/",
		amqp.WithTaskQueues(amqp.TaskQueue{Name: "jobs", Type: amqp.Quorum, Arguments: map[string]any{"x-max-priority": 10}}))
	fmt.Println(err)
	// Output:
	// true
	// stalk: invalid options: WithReplyQueue("orders-api-1") names a shared reply queue, but WithReplyMode(per-task) was given
	// stalk: invalid options: queue "jobs": quorum queues do not take x-max-priority
}

// DecodeTask reads a task message as a worker does: here one built by
// hand, as a Python client would publish it.
func ExampleDecodeTask() {
	headers := amqp091.Table{"task": "tasks.add", "id": "82df4be8-f1d9-4d41-8a4a-46a5c50adf8f", "retries": int32(0)}
	body := []byte(`[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`)
	tm, err := amqp.DecodeTask(headers, "application/json", "utf-8", body)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(tm.Task, tm.Args, tm.Kwargs)
	// Output:
	// tasks.add [2 3] map[]
}
