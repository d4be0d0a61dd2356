package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/result"
)

// A task that was retried and then succeeded shows its result, not the
// exception it was retried for.
func TestTaskTableInfo(t *testing.T) {
	retried := events.Task{ID: "a", Name: "tasks.flaky", State: result.Success, Result: "'ok after 2'",
		Exception: "RuntimeError('try again')", Updated: time.Now()}
	var b strings.Builder
	drawTaskTable(&b, []events.Task{retried}, time.Now(), false)
	assert.Contains(t, b.String(), "'ok after 2'")
	assert.NotContains(t, b.String(), "try again")

	for _, st := range []result.State{result.Retry, result.Failure} {
		retried.State = st
		assert.Equal(t, "RuntimeError('try again')", taskInfo(retried), "%s", st)
	}
	assert.Equal(t, "", taskInfo(events.Task{State: result.Started}))
}
