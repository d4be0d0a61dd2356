package celery

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReprMatchesCelery compares ArgsRepr and KwargsRepr with what Celery's
// own saferepr(args, 1024) printed for the same values (recorded from
// Debian's Celery 5.2.6 into testdata/saferepr.json; 5.6.3's saferepr is
// the same code).
func TestReprMatchesCelery(t *testing.T) {
	raw, err := os.ReadFile("testdata/saferepr.json")
	require.NoError(t, err)
	var doc struct {
		Cases []struct {
			Args       json.RawMessage `json:"args"`
			ArgsRepr   string          `json:"argsrepr"`
			Kwargs     json.RawMessage `json:"kwargs"`
			KwargsRepr string          `json:"kwargsrepr"`
		} `json:"cases"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.NotEmpty(t, doc.Cases)
	for i, c := range doc.Cases {
		if c.Args != nil {
			var args []any
			dec := json.NewDecoder(bytes.NewReader(c.Args))
			dec.UseNumber()
			require.NoError(t, dec.Decode(&args))
			assert.Equal(t, c.ArgsRepr, ArgsRepr(args), "case %d", i)
		}
		if c.Kwargs != nil {
			var kw map[string]any
			dec := json.NewDecoder(bytes.NewReader(c.Kwargs))
			dec.UseNumber()
			require.NoError(t, dec.Decode(&kw))
			assert.Equal(t, c.KwargsRepr, KwargsRepr(kw), "case %d", i)
		}
	}
}

func TestReprGoValues(t *testing.T) {
	assert.Equal(t, "(2.0, 1e+20, 0.1, 3)", ArgsRepr([]any{2.0, 1e20, float32(0.1), uint8(3)}))
	assert.Equal(t, "([1.5, 2.0], {'a': 1.0})", ArgsRepr([]any{[]float64{1.5, 2}, map[string]float64{"a": 1}}))
	type point struct {
		X int     `json:"x"`
		Y float64 `json:"y"`
	}
	// Structs are what encoding/json makes of them, fields in order.
	assert.Equal(t, "({'x': 1, 'y': 2},)", ArgsRepr([]any{point{1, 2}}))
	assert.Equal(t, "{}", KwargsRepr(nil))
}

func TestPyFloat(t *testing.T) {
	for f, want := range map[float64]string{
		2: "2.0", 1e20: "1e+20", 1e16: "1e+16", 1e15: "1000000000000000.0", 1e-5: "1e-05",
		0.0001: "0.0001", 0.1: "0.1", -2.5: "-2.5", 1.5e300: "1.5e+300", 123456789.123456789: "123456789.12345679",
	} {
		assert.Equal(t, want, PyFloat(f, 64))
	}
	assert.Equal(t, "0.1", PyFloat(float64(float32(0.1)), 32))
}

func TestAppendJSONFloats(t *testing.T) {
	b, err := AppendJSON(nil, []any{2.0, 1e20, 3, []float64{1}, map[string]any{"b": 0.5, "a": "<&>"}})
	require.NoError(t, err)
	assert.Equal(t, `[2.0,1e+20,3,[1.0],{"a":"<&>","b":0.5}]`, string(b))
	var back []any
	require.NoError(t, json.Unmarshal(b, &back))
	_, err = AppendJSON(nil, []any{func() {}})
	assert.Error(t, err)
}

// The direct path for flat arguments writes what saferepr writes, including
// at and past the limit, where it hands over to saferepr.
func TestFlatReprMatchesSaferepr(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	scalar := func() any {
		switch rng.IntN(9) {
		case 0:
			return nil
		case 1:
			return rng.IntN(2) == 0
		case 2:
			return rng.Int64() - rng.Int64()
		case 3:
			return rng.Uint32()
		case 4:
			return []float64{0, math.Copysign(0, -1), 1.5, 2, 1e20, 1e-7, math.Inf(1), math.NaN(), 123456789012345678}[rng.IntN(9)]
		case 5:
			return float32(rng.Float64())
		case 6:
			return int8(rng.IntN(256) - 128)
		default:
			parts := []string{"a", " ", "'", `\`, "é", "日本", "\n", "x y", strings.Repeat("w ", 40)}
			var b strings.Builder
			for range rng.IntN(30) {
				b.WriteString(parts[rng.IntN(len(parts))])
			}
			return b.String()
		}
	}
	fast := 0
	for i := range 20000 {
		args := make([]any, rng.IntN(1+i%40))
		for j := range args {
			args[j] = scalar()
		}
		want := saferepr(pyTuple(toPy(args).([]any)), ReprLimit)
		got, ok := flatArgsRepr(args)
		if ok {
			fast++
			require.Equal(t, want, got, "args %#v", args)
		}
		require.Equal(t, want, ArgsRepr(args))

		kw := make(map[string]any, len(args))
		for j, a := range args {
			kw[fmt.Sprintf("k%d'%s", j, []string{"", "é", " x"}[j%3])] = a
		}
		want = saferepr(toPy(kw), ReprLimit)
		if got, ok := flatKwargsRepr(kw); ok {
			require.Equal(t, want, got, "kwargs %#v", kw)
		}
		require.Equal(t, want, KwargsRepr(kw))
	}
	assert.Greater(t, fast, 10000, "most of these take the direct path")
}
