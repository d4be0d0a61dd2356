package revoke_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stalk-dev/stalk/revoke"
)

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := revoke.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	replies, err := c.Revoke(ctx, []string{"d9078da5-9915-40a0-bfa1-392c7bde42ed"},
		revoke.Terminate(), revoke.Signal("SIGKILL"), revoke.Wait(2*time.Second))
	for _, r := range replies {
		fmt.Println(r.Worker, r.OK)
	}
	var we *revoke.WorkerError
	if errors.As(err, &we) {
		fmt.Println("worker", we.Worker, "failed:", we.Message)
	}
}

func ExampleController_Ping() {
	ctx := context.Background()
	c, err := revoke.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	replies, err := c.Ping(ctx, revoke.Destination("celery@web-1", "celery@web-2"), revoke.Wait(time.Second))
	for _, r := range replies {
		fmt.Println(r.Worker, "is alive")
	}
	if errors.Is(err, revoke.ErrNoReply) {
		fmt.Println(err) // names the workers that stayed silent
	}
}

// Bad input fails before any I/O, so this example needs no broker (and no
// Controller: the methods check their input first).
func ExampleController_Revoke_badInput() {
	var c *revoke.Controller
	_, err := c.Revoke(context.Background(), nil)
	fmt.Println(errors.Is(err, revoke.ErrInvalidArgument))
	_, err = c.Revoke(context.Background(), []string{"id"}, revoke.Terminate(), revoke.Signal("SIGNOPE"))
	fmt.Println(errors.Is(err, revoke.ErrInvalidSignal))
	// Output:
	// true
	// true
}

// The broadcast a revoke publishes on celery.pidbox, as a Celery worker
// reads it.
func ExampleRevokeMessage() {
	body, err := revoke.RevokeMessage([]string{"d9078da5-9915-40a0-bfa1-392c7bde42ed"},
		revoke.Terminate(), revoke.Signal("KILL"), revoke.Destination("celery@web-1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(body))
	// Output:
	// {"method":"revoke","arguments":{"task_id":"d9078da5-9915-40a0-bfa1-392c7bde42ed","terminate":true,"signal":"SIGKILL"},"destination":["celery@web-1"],"pattern":null,"matcher":null}
}
