package result

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// An event that says "retries 1" can arrive before the first RETRY
// message: the entry must not add the two up.
func TestEntryRetriesCountedOnce(t *testing.T) {
	for _, order := range []string{"event first", "messages first", "interleaved"} {
		t.Run(order, func(t *testing.T) {
			e := NewEntry("r")
			retry := func() { e.Deliver(&Meta{TaskID: "r", Status: Retry}) }
			switch order {
			case "event first":
				e.Observe("w", 1, time.Time{}, "")
				e.Observe("w", 2, time.Time{}, "")
				retry()
				retry()
			case "messages first":
				retry()
				retry()
				e.Observe("w", 1, time.Time{}, "")
				e.Observe("w", 2, time.Time{}, "")
			case "interleaved":
				e.Observe("w", 1, time.Time{}, "")
				retry()
				e.Observe("w", 2, time.Time{}, "")
				retry()
			}
			e.Deliver(&Meta{TaskID: "r", Status: Success})
			assert.Equal(t, 2, e.Retries())
		})
	}
	e := NewEntry("only-messages")
	for range 3 {
		e.Deliver(&Meta{TaskID: "only-messages", Status: Retry})
	}
	assert.Equal(t, 3, e.Retries(), "without events, the RETRY messages count")
}
