package main

import (
	"bytes"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/result"
)

func TestBar(t *testing.T) {
	assert.Equal(t, "          ", bar(0, 10))
	assert.Equal(t, "█████     ", bar(0.5, 10))
	assert.Equal(t, "██████████", bar(1, 10))
	assert.Equal(t, "██████████", bar(1.7, 10))
	assert.Equal(t, "          ", bar(-1, 10))
	assert.Equal(t, "█▌        ", bar(0.15, 10))
	for _, f := range []float64{0, 0.01, 0.33, 0.5, 0.99, 1} {
		assert.Equal(t, 20, runeLen(bar(f, 20)), f)
	}
}

func TestRenderLineFitsWidth(t *testing.T) {
	s := lineState{Name: "tasks.progress", State: "PROGRESS", Cur: 4, Tot: 10, HasBar: true, Elapsed: 900 * time.Millisecond, Frame: 2}
	for _, w := range []int{20, 40, 60, 80, 200} {
		line := renderLine(s, w)
		assert.LessOrEqual(t, runeLen(line), w-1, "width %d: %q", w, line)
	}
	line := renderLine(s, 80)
	assert.True(t, strings.HasPrefix(line, "⠹ tasks.progress PROGRESS ["), line)
	assert.Contains(t, line, "4/10")
	assert.Contains(t, line, " 40%")
	assert.Contains(t, line, "900ms")
	assert.Contains(t, line, "["+bar(0.4, 32)+"]", "the bar takes the room left")
	wide := renderLine(s, 200)
	assert.Contains(t, wide, "["+bar(0.4, 40)+"]", "the bar is at most 40 cells")

	narrow := renderLine(s, 40)
	assert.NotContains(t, narrow, "[", "no room for a bar")
}

func TestRenderLineStates(t *testing.T) {
	started := renderLine(lineState{Name: "tasks.add", State: result.Started, Worker: "celery@w1", Elapsed: 20 * time.Millisecond}, 80)
	assert.Equal(t, "⠋ tasks.add STARTED on celery@w1  20ms", started)
	pending := renderLine(lineState{Name: "tasks.add", State: result.Pending, Frame: 1}, 80)
	assert.Equal(t, "⠙ tasks.add PENDING  0ms", pending)
	ok := renderLine(lineState{Name: "tasks.add", State: result.Success, Final: true, Elapsed: 1500 * time.Millisecond}, 80)
	assert.Equal(t, "✔ tasks.add SUCCESS  1.5s", ok)
	failed := renderLine(lineState{Name: "tasks.boom", State: result.Failure, Final: true}, 80)
	assert.True(t, strings.HasPrefix(failed, "✖ tasks.boom FAILURE"), failed)
	custom := renderLine(lineState{Name: "t", State: "RENDERING", Info: `{"page":3}`}, 80)
	assert.Equal(t, `⠋ t RENDERING {"page":3}  0ms`, custom)
}

func TestProgressOf(t *testing.T) {
	big5 := big.NewInt(5)
	cases := []struct {
		v        any
		cur, tot float64
		ok       bool
	}{
		{map[string]any{"current": int64(3), "total": int64(10)}, 3, 10, true},
		{map[string]any{"current": 2.5, "total": 5.0}, 2.5, 5, true},
		{map[string]any{"current": json.Number("1"), "total": big5}, 1, 5, true},
		{map[string]any{"current": "4", "total": "8"}, 4, 8, true},
		{map[string]any{"current": int64(3)}, 0, 0, false},
		{map[string]any{"current": int64(1), "total": int64(0)}, 0, 0, false},
		{map[string]any{"current": int64(-1), "total": int64(3)}, 0, 0, false},
		{map[string]any{"current": "x", "total": int64(3)}, 0, 0, false},
		{[]any{1, 2}, 0, 0, false},
		{nil, 0, 0, false},
	}
	for _, c := range cases {
		cur, tot, ok := progressOf(c.v)
		assert.Equal(t, c.ok, ok, "%v", c.v)
		if c.ok {
			assert.Equal(t, c.cur, cur)
			assert.Equal(t, c.tot, tot)
		}
	}
}

func meta(st result.State, raw string) result.Meta {
	v, err := result.DecodeJSON([]byte(raw))
	if err != nil {
		panic(err)
	}
	return result.Meta{Status: st, Result: v, RawResult: json.RawMessage(raw)}
}

func fakeClock() func() time.Time {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	return func() time.Time {
		n++
		return t0.Add(time.Duration(n-1) * 100 * time.Millisecond)
	}
}

func TestProgressViewPlain(t *testing.T) {
	var buf bytes.Buffer
	v := newProgressView(&buf, false, func() int { return 80 }, fakeClock(), "tasks.progress")
	v.Update(meta(result.Started, `{"pid": 1, "hostname": "celery@w1"}`))
	v.Update(meta("PROGRESS", `{"current": 1, "total": 4}`))
	v.Tick() // no spinner off a terminal
	v.Update(meta("PROGRESS", `{"current": 3, "total": 4}`))
	v.Update(meta("RENDERING", `{"page": 2}`))
	final := meta(result.Success, `4`)
	v.Finish(&final)
	want := []string{
		"[  100ms] STARTED on celery@w1",
		"[  200ms] PROGRESS 1/4 (25%)",
		"[  300ms] PROGRESS 3/4 (75%)",
		`[  400ms] RENDERING {"page":2}`,
		"[  500ms] SUCCESS",
	}
	assert.Equal(t, strings.Join(want, "\n")+"\n", buf.String())
	assert.NotContains(t, buf.String(), "\r")
	assert.NotContains(t, buf.String(), "\x1b")
}

func TestProgressViewTerminal(t *testing.T) {
	var buf bytes.Buffer
	v := newProgressView(&buf, true, func() int { return 60 }, fakeClock(), "tasks.progress")
	v.Update(meta(result.Started, `{"pid": 1, "hostname": "celery@w1"}`))
	v.Update(meta("PROGRESS", `{"current": 5, "total": 10}`))
	v.Tick()
	final := meta(result.Success, `10`)
	v.Finish(&final)
	out := buf.String()
	frames := strings.Split(out, "\r")[1:]
	require.Len(t, frames, 4, "%q", out)
	for _, f := range frames {
		assert.Contains(t, f, "\x1b[K", "each redraw erases the rest of the line")
		assert.LessOrEqual(t, runeLen(strings.TrimSuffix(strings.TrimSuffix(f, "\n"), "\x1b[K")), 59)
	}
	assert.Contains(t, frames[0], "STARTED on celery@w1")
	assert.Contains(t, frames[1], "5/10")
	assert.Contains(t, frames[2], "5/10", "a tick redraws the same state")
	assert.NotEqual(t, frames[1][:3], frames[2][:3], "a tick advances the spinner")
	assert.True(t, strings.HasPrefix(frames[3], "✔ tasks.progress SUCCESS ["), frames[3])
	assert.Contains(t, frames[3], "10/10")
	assert.Contains(t, frames[3], "100%")
	assert.True(t, strings.HasSuffix(out, "\n"), "the final line ends")
}

func TestProgressViewClear(t *testing.T) {
	var buf bytes.Buffer
	v := newProgressView(&buf, true, func() int { return 60 }, fakeClock(), "t")
	v.Clear()
	assert.Empty(t, buf.String(), "nothing to clear")
	v.Update(meta(result.Started, `{"hostname": "w"}`))
	buf.Reset()
	v.Clear()
	assert.Equal(t, "\r\x1b[K", buf.String())
}
