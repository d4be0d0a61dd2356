package harness

import (
	"fmt"
	"os"
	"sync"
	"time"
)

var measureMu sync.Mutex

// Measured appends one line, prefixed with the time, to the file named by
// $STALK_MEASUREMENTS, if it is set: the numbers a suite measured (recovery
// times, rates, counts), kept across runs for comparing them. Tests log the
// same numbers with t.Logf as well.
func Measured(format string, args ...any) {
	path := os.Getenv("STALK_MEASUREMENTS")
	if path == "" {
		return
	}
	measureMu.Lock()
	defer measureMu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
}
