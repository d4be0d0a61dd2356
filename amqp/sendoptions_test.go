package amqp

import (
	"sync"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The user's nested header maps are shared by every send that uses them:
// turning them into amqp091 tables copies them, never changes them, so
// that concurrent sends with the same headers do not race.
func TestAmqpTableLeavesNestedMapsAlone(t *testing.T) {
	user := map[string]any{"a": map[string]any{"b": map[string]any{"c": 1}}, "list": []any{map[string]any{"d": map[string]any{}}}, "empty": map[string]any{}}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				h := map[string]any{"x": 1}
				for k, v := range user {
					h[k] = v
				}
				tab := amqpTable(h)
				assert.NoError(t, tab.Validate())
			}
		}()
	}
	wg.Wait()
	_, isMap := user["a"].(map[string]any)["b"].(map[string]any)
	assert.True(t, isMap, "the user's nested map is still a map[string]any")
	_, isMap = user["list"].([]any)[0].(map[string]any)["d"].(map[string]any)
	assert.True(t, isMap, "the map in the user's slice too")

	h := map[string]any{"a": map[string]any{"b": 1}, "empty": map[string]any{}}
	tab := amqpTable(h)
	require.IsType(t, amqp091.Table{}, tab["a"])
	assert.Equal(t, amqp091.Table{"b": 1}, tab["a"])
	require.IsType(t, amqp091.Table{}, tab["empty"])
	assert.Empty(t, tab["empty"])
}
