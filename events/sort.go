package events

import (
	"cmp"
	"slices"
)

func sortTasks(ts []Task) {
	slices.SortStableFunc(ts, func(a, b Task) int { return cmp.Compare(a.Updated.UnixNano(), b.Updated.UnixNano()) })
}
