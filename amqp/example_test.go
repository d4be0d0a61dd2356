package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"time"

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

// Follow a task's progress: every state arrives through OnMessage, in order.
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
	_, _ = r.Get(ctx, result.OnMessage(func(m result.Meta) {
		if m.Status == "PROGRESS" {
			fmt.Println(m.Result)
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
