package result

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// validWireState is the rule `^[A-Za-z][A-Za-z0-9_.\-]{0,63}$`, PENDING
// excepted, written out.
func TestValidWireState(t *testing.T) {
	rule := regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.\-]{0,63}$`)
	cases := []string{"", "SUCCESS", "PENDING", "PROGRESS", "my.state-2_x", "2FAST", "_X", "a", "A b", "é", "X\n",
		strings.Repeat("A", 64), strings.Repeat("A", 65), "ok-", "Z9", "a/b"}
	for _, s := range cases {
		want := s != "PENDING" && rule.MatchString(s)
		assert.Equal(t, want, validWireState(State(s)), "%q", s)
	}
}
