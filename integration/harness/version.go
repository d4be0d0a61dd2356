package harness

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

var celeryVersion = sync.OnceValues(func() (string, error) {
	out, err := exec.Command(Python(), "-c", "import celery; print(celery.__version__)").Output()
	if err != nil {
		return "", fmt.Errorf("%s: celery version: %w", Python(), err)
	}
	return strings.TrimSpace(string(out)), nil
})

// CeleryVersion is the version of the Celery the test workers run
// ($STALK_PYTHON's, or Debian's 5.2.6), e.g. "5.6.3".
func CeleryVersion() string {
	v, err := celeryVersion()
	if err != nil {
		panic(err)
	}
	return v
}

// CeleryAtLeast reports whether the workers' Celery is major.minor or newer.
func CeleryAtLeast(major, minor int) bool {
	parts := strings.SplitN(CeleryVersion(), ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, _ := strconv.Atoi(parts[0])
	mi, _ := strconv.Atoi(parts[1])
	return ma > major || ma == major && mi >= minor
}
