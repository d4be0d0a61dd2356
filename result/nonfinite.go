package result

import (
	"bytes"
	"math"
)

// Python's json.dumps writes NaN, Infinity and -Infinity for non-finite
// floats (allow_nan=True is its default), so a Celery worker can send them
// although they are not JSON. Before decoding, they are replaced by string
// sentinels that convert turns back into float64 values.
const (
	nanSentinel    = "\x00stalk:NaN"
	posInfSentinel = "\x00stalk:+Inf"
	negInfSentinel = "\x00stalk:-Inf"
)

var nonFiniteTokens = []struct {
	token, repl []byte
}{
	{[]byte("-Infinity"), []byte(`"\u0000stalk:-Inf"`)},
	{[]byte("Infinity"), []byte(`"\u0000stalk:+Inf"`)},
	{[]byte("NaN"), []byte(`"\u0000stalk:NaN"`)},
}

// replaceNonFinite rewrites Python's non-finite number tokens outside JSON
// strings. It reports whether it changed anything.
func replaceNonFinite(data []byte) ([]byte, bool) {
	if !bytes.Contains(data, []byte("NaN")) && !bytes.Contains(data, []byte("Infinity")) {
		return data, false
	}
	var out []byte
	inString, escaped, changed := false, false, false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if inString {
			out = append(out, c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		if c == '"' {
			inString = true
			out = append(out, c)
			continue
		}
		matched := false
		for _, t := range nonFiniteTokens {
			if bytes.HasPrefix(data[i:], t.token) {
				out = append(out, t.repl...)
				i += len(t.token) - 1
				matched, changed = true, true
				break
			}
		}
		if !matched {
			out = append(out, c)
		}
	}
	return out, changed
}

func nonFiniteValue(s string) (float64, bool) {
	switch s {
	case nanSentinel:
		return math.NaN(), true
	case posInfSentinel:
		return math.Inf(1), true
	case negInfSentinel:
		return math.Inf(-1), true
	}
	return 0, false
}
