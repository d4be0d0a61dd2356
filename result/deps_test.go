package result_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestTransportFree keeps result free of any transport: besides the
// standard library it may import promise, and google/uuid for the uuid
// values newer Celery versions send (uuid.UUID is the type they decode
// into); nothing of AMQP, stalk's broker code, or a logger.
func TestTransportFree(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "github.com/stalk-dev/stalk/result").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case dep == "github.com/stalk-dev/stalk/result", dep == "github.com/stalk-dev/stalk/promise",
			dep == "github.com/google/uuid":
		default:
			t.Errorf("result imports %s; it may import promise, google/uuid and the standard library only", dep)
		}
	}
}
