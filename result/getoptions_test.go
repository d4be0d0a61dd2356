package result

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// OnInterval runs on Get's goroutine once per period while Get waits, and
// Callback gets the id and value before Get returns; the same for Join.
func TestGetOnIntervalAndCallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFake()
		r := New("a", b)
		go func() {
			time.Sleep(350 * time.Millisecond)
			b.deliver("a", Success, int64(7))
		}()
		ticks := 0
		var cbID string
		var cbVal any
		v, err := r.Get(context.Background(),
			OnInterval(100*time.Millisecond, func() { ticks++ }),
			Callback(func(id string, v any) { cbID, cbVal = id, v }))
		require.NoError(t, err)
		assert.Equal(t, int64(7), v)
		assert.Equal(t, 3, ticks, "ticks at 100, 200 and 300 ms")
		assert.Equal(t, "a", cbID)
		assert.Equal(t, int64(7), cbVal)

		// Compatibility options change nothing.
		v, err = r.Get(context.Background(), NoAck(false), DisableSyncSubtasks(false))
		require.NoError(t, err)
		assert.Equal(t, int64(7), v)
	})
	synctest.Test(t, func(t *testing.T) {
		b := newFake()
		rs := members(b, 2)
		go func() {
			time.Sleep(250 * time.Millisecond)
			b.deliver("t1", Success, int64(1))
			time.Sleep(100 * time.Millisecond)
			b.deliver("t0", Success, int64(0))
		}()
		ticks := 0
		var seen []string
		vals, err := NewResultSet(rs...).Join(context.Background(),
			OnInterval(100*time.Millisecond, func() { ticks++ }),
			Callback(func(id string, _ any) { seen = append(seen, id) }))
		require.NoError(t, err)
		assert.Equal(t, []any{int64(0), int64(1)}, vals)
		assert.Equal(t, 3, ticks)
		assert.Equal(t, []string{"t1", "t0"}, seen, "Callback in arrival order")
	})
}
