//go:build race

package eventstest

const raceEnabled = true
