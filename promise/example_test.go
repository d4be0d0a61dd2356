package promise_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/stalk-dev/stalk/promise"
)

// A promise settles once; Wait blocks under a context, Peek never blocks.
func Example() {
	p := promise.New[int]()
	_, settled, _ := p.Peek()
	fmt.Println("settled:", settled)

	go p.Resolve(42)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	v, err := p.Wait(ctx)
	fmt.Println(v, err)

	fmt.Println("resolved again:", p.Resolve(7)) // a promise settles exactly once
	// Output:
	// settled: false
	// 42 <nil>
	// resolved again: false
}

// Then and Catch chain callbacks, which run in order on the promise's own
// goroutine, never on the one that settled it.
func ExamplePromise_Then() {
	p := promise.New[string]()
	doubled := promise.Map(p, func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		return 2 * n, err
	})
	p.Resolve("21")
	v, err := doubled.Wait(context.Background())
	fmt.Println(v, err)

	failed := promise.Rejected[int](errors.New("boom")).Catch(func(err error) (int, error) {
		return -1, nil // recovered
	})
	v, err = failed.Wait(context.Background())
	fmt.Println(v, err)
	// Output:
	// 42 <nil>
	// -1 <nil>
}

// All waits for every promise, in order, and fails with the first error.
func ExampleAll() {
	a, b := promise.Resolved(1), promise.Resolved(2)
	vs, err := promise.All(a, b).Wait(context.Background())
	fmt.Println(vs, err)
	// Output:
	// [1 2] <nil>
}
