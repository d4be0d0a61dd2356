package result

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An ignored result with the entry its sender made answers from that entry
// and never asks the backend for one: in per-task mode an attach follows a
// reply queue, which for an ignored task nobody ever writes to.
func TestIgnoredResultNeverAttaches(t *testing.T) {
	b := newFake()
	e := NewEntry("t1")
	e.SetSendInfo(SendInfo{Name: "tasks.touch", Queue: "q1", Args: []any{1}})
	r := New("t1", b, WithIgnored(true), WithEntry(e))
	assert.Equal(t, "q1", r.Queue())
	assert.Equal(t, "tasks.touch", r.Name())
	assert.Equal(t, []any{1}, r.Args())
	assert.Equal(t, Pending, r.State())
	v, err := r.Get(context.Background())
	require.NoError(t, err)
	assert.Nil(t, v)

	called := 0
	var got any = "unset"
	p := r.Then(func(v any) { called++; got = v }, func(error) { t.Error("onError for an ignored result") })
	v, err = p.Wait(context.Background())
	require.NoError(t, err)
	assert.Nil(t, v)
	assert.Equal(t, 1, called)
	assert.Nil(t, got)
	assert.Zero(t, b.attaches, "no attach")

	// A panicking callback rejects the promise instead of reaching the caller.
	p = r.Then(func(any) { panic("boom") }, nil)
	_, err = p.Wait(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "boom")
}
