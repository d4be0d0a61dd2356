package promise

import (
	"context"
	"errors"
	"testing"
)

// BenchmarkNewResolve is the life of a result's promise when nobody
// registered a callback: create, settle.
func BenchmarkNewResolve(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		p := New[int]()
		p.Resolve(1)
	}
}

// BenchmarkResolveWait settles a promise and reads it with Wait, the path
// of a synchronous Get whose result has already arrived.
func BenchmarkResolveWait(b *testing.B) {
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		p := New[int]()
		p.Resolve(1)
		if v, err := p.Wait(ctx); err != nil || v != 1 {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkResolveAlreadySettled is a duplicate final message: the second
// settle must be cheap and change nothing.
func BenchmarkResolveAlreadySettled(b *testing.B) {
	p := Resolved(1)
	b.ReportAllocs()
	for b.Loop() {
		if p.Resolve(2) {
			b.Fatal("settled twice")
		}
	}
}

// BenchmarkResolveWakesWaiter settles a promise another goroutine is
// blocked on in Wait, and waits for that goroutine to see it: the
// consumer-to-caller handoff of every round trip.
func BenchmarkResolveWakesWaiter(b *testing.B) {
	ctx := context.Background()
	ps := make(chan *Promise[int])
	seen := make(chan struct{})
	go func() {
		for p := range ps {
			if _, err := p.Wait(ctx); err != nil {
				panic(err)
			}
			seen <- struct{}{}
		}
	}()
	defer close(ps)
	b.ReportAllocs()
	for b.Loop() {
		p := New[int]()
		ps <- p
		p.Resolve(1)
		<-seen
	}
}

// BenchmarkResolveWithCallback settles a promise with one OnSettle
// callback, which runs on the promise's dispatcher goroutine.
func BenchmarkResolveWithCallback(b *testing.B) {
	done := make(chan struct{}, 1)
	b.ReportAllocs()
	for b.Loop() {
		p := New[int]()
		p.OnSettle(func(int, error) { done <- struct{}{} })
		p.Resolve(1)
		<-done
	}
}

// BenchmarkReject settles with an error, the path of a FAILURE result.
func BenchmarkReject(b *testing.B) {
	err := errors.New("boom")
	b.ReportAllocs()
	for b.Loop() {
		p := New[int]()
		p.Reject(err)
	}
}
