package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestOutcomes(t *testing.T) {
	s := &soak{start: time.Now()}
	require.Equal(t, "no result published", s.outcome("a"))
	require.Equal(t, "no result published", s.outcomeKinds("a"))
	s.recordOutcome("a", "nacked")
	s.recordOutcome("a", "returned 312 NO_ROUTE, acked")
	s.recordOutcome("b", "no confirm: context deadline exceeded")
	require.Regexp(t, `^at \d+\.\d{3}s nacked; at \d+\.\d{3}s returned 312 NO_ROUTE, acked$`, s.outcome("a"))
	require.Equal(t, "nacked; returned 312 NO_ROUTE, acked", s.outcomeKinds("a"))
	require.Regexp(t, `^at \d+\.\d{3}s no confirm: context deadline exceeded$`, s.outcome("b"))
	require.Equal(t, "no confirm", s.outcomeKinds("b"))
}
