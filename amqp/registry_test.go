package amqp

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/result"
)

func TestRegistrySettled(t *testing.T) {
	r := newRegistry(10, time.Hour)
	done := &result.Meta{TaskID: "a", Status: result.Success, Result: int64(1)}

	// The usual path: pending, then cached.
	e, follow := r.attach("a")
	require.True(t, follow)
	e.Deliver(done)
	r.settled("a", e, done)
	assert.Same(t, e, r.lookup("a"))
	p, c := r.counts()
	assert.Equal(t, 0, p)
	assert.Equal(t, 1, c)

	// Released while its final state was being delivered: the result is
	// kept under a fresh entry, not dropped, and not the released one
	// (whose waits ended with ErrReleased).
	released, _ := r.attach("b")
	require.Same(t, released, r.release("b"))
	released.Fail(result.ErrReleased)
	m := &result.Meta{TaskID: "b", Status: result.Success, Result: int64(2)}
	released.Deliver(m)
	r.settled("b", released, m)
	kept := r.lookup("b")
	require.NotNil(t, kept)
	assert.NotSame(t, released, kept)
	assert.Equal(t, result.Success, kept.State())
	again, follow := r.attach("b")
	assert.False(t, follow, "a later reader finds it ready")
	assert.Same(t, kept, again)

	// An orphan settles in place.
	o, known, _ := r.route("c")
	require.False(t, known)
	om := &result.Meta{TaskID: "c", Status: result.Success}
	o.Deliver(om)
	r.settled("c", o, om)
	assert.Same(t, o, r.lookup("c"))
}
