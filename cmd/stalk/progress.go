package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/stalk-dev/stalk/result"
)

// progressView shows a task's states on stderr while call waits.
//
// On a terminal it keeps one line up to date: a spinner, the task name and
// state, and a progress bar when the latest state's meta has "current" and
// "total" (as update_state(state="PROGRESS", meta={"current": i, "total":
// n}) sends). Anywhere else it prints one plain line per state message, so
// logs and pipes get a readable record. It is driven from one goroutine
// (Get's, through OnMessage and OnInterval) and is not safe for concurrent
// use.
type progressView struct {
	w     io.Writer
	tty   bool
	width func() int
	now   func() time.Time

	name  string
	start time.Time

	state    result.State
	worker   string
	info     string // compact meta of a custom state without progress
	cur, tot float64
	hasBar   bool
	frame    int
	drawn    bool
}

func newProgressView(w io.Writer, tty bool, width func() int, now func() time.Time, name string) *progressView {
	return &progressView{w: w, tty: tty, width: width, now: now, name: name, start: now(), state: result.Pending}
}

// Update records a state message and shows it.
func (p *progressView) Update(m result.Meta) {
	if m.Status.Ready() {
		return // Finish shows the final state
	}
	p.state = m.Status
	if m.Status == result.Started {
		if d, ok := m.Result.(map[string]any); ok {
			if h, ok := d["hostname"].(string); ok {
				p.worker = h
			}
		}
	}
	p.info = ""
	if cur, tot, ok := progressOf(m.Result); ok {
		p.cur, p.tot, p.hasBar = cur, tot, true
	} else {
		p.hasBar = false
		if m.Status.IsCustom() && m.Result != nil {
			p.info = compactMeta(m.RawResult)
		}
	}
	if p.tty {
		p.draw(false)
		return
	}
	fmt.Fprintln(p.w, p.plainLine(m.Status))
}

// Tick advances the spinner.
func (p *progressView) Tick() {
	if !p.tty {
		return
	}
	p.frame++
	p.draw(false)
}

// Finish shows the final state and ends the line.
func (p *progressView) Finish(m *result.Meta) {
	if m == nil {
		p.Clear()
		return
	}
	p.state = m.Status
	if m.Status == result.Success && p.hasBar {
		p.cur = p.tot
	}
	p.info = ""
	if !p.tty {
		fmt.Fprintln(p.w, p.plainLine(m.Status))
		return
	}
	p.draw(true)
	fmt.Fprint(p.w, "\n")
	p.drawn = false
}

// Clear erases the live line, so that an error message starts clean.
func (p *progressView) Clear() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

func (p *progressView) draw(final bool) {
	line := renderLine(lineState{
		Name: p.name, State: p.state, Worker: p.worker, Info: p.info,
		Cur: p.cur, Tot: p.tot, HasBar: p.hasBar,
		Elapsed: p.now().Sub(p.start), Frame: p.frame, Final: final,
	}, p.width())
	fmt.Fprint(p.w, "\r"+line+"\x1b[K")
	p.drawn = true
}

func (p *progressView) plainLine(s result.State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%7s] %s", fmtDuration(p.now().Sub(p.start)), s)
	if s == result.Started && p.worker != "" {
		fmt.Fprintf(&b, " on %s", p.worker)
	}
	if p.hasBar && !s.Ready() {
		fmt.Fprintf(&b, " %s/%s (%d%%)", fmtNum(p.cur), fmtNum(p.tot), percent(p.cur, p.tot))
	} else if p.info != "" {
		b.WriteString(" " + p.info)
	}
	return b.String()
}

// lineState is everything one terminal line shows.
type lineState struct {
	Name    string
	State   result.State
	Worker  string
	Info    string
	Cur     float64
	Tot     float64
	HasBar  bool
	Elapsed time.Duration
	Frame   int
	Final   bool
}

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// renderLine draws one status line that fits in width columns (one column
// is left free so the terminal never wraps):
//
//	⠹ tasks.progress PROGRESS [████████▌           ]  4/10  40%  0.9s
//	✔ tasks.add SUCCESS  0.1s
func renderLine(s lineState, width int) string {
	icon := spinner[s.Frame%len(spinner)]
	if s.Final {
		switch s.State {
		case result.Success:
			icon = "✔"
		default:
			icon = "✖"
		}
	}
	head := icon + " " + string(s.State)
	if s.Name != "" {
		head = icon + " " + s.Name + " " + string(s.State)
	}
	tail := "  " + fmtDuration(s.Elapsed)
	var mid string
	switch {
	case s.HasBar:
		num := fmt.Sprintf("  %s/%s  %3d%%", fmtNum(s.Cur), fmtNum(s.Tot), percent(s.Cur, s.Tot))
		room := width - 1 - runeLen(head) - runeLen(num) - runeLen(tail) - 3
		if room >= 10 {
			mid = " [" + bar(s.Cur/s.Tot, min(room, 40)) + "]" + num
		} else {
			mid = num
		}
	case s.State == result.Started && s.Worker != "":
		mid = " on " + s.Worker
	case s.Info != "":
		mid = " " + s.Info
	}
	return fitWidth(head+mid+tail, width-1)
}

// bar draws a bar of n cells filled to frac, with eighth-cell precision.
func bar(frac float64, n int) string {
	if math.IsNaN(frac) || frac < 0 {
		frac = 0
	}
	if frac > 1 {
		frac = 1
	}
	eighths := int(frac * float64(n*8))
	full := eighths / 8
	var b strings.Builder
	b.WriteString(strings.Repeat("█", full))
	if full < n {
		if part := eighths % 8; part > 0 {
			b.WriteString([]string{"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"}[part])
			full++
		}
		b.WriteString(strings.Repeat(" ", n-full))
	}
	return b.String()
}

func percent(cur, tot float64) int {
	if tot <= 0 {
		return 0
	}
	p := int(math.Floor(cur / tot * 100))
	return max(0, min(p, 100))
}

func fitWidth(s string, w int) string {
	if w <= 0 || runeLen(s) <= w {
		return s
	}
	if w == 1 {
		return "…"
	}
	r := []rune(s)
	return string(r[:w-1]) + "…"
}

func runeLen(s string) int { return utf8.RuneCountInString(s) }

// progressOf reads {"current": c, "total": t} from a state's meta. Numbers
// may be integers, big integers, floats or numeric strings. total must be
// positive.
func progressOf(v any) (cur, tot float64, ok bool) {
	m, isMap := v.(map[string]any)
	if !isMap {
		return 0, 0, false
	}
	c, ok1 := toFloat(m["current"])
	t, ok2 := toFloat(m["total"])
	if !ok1 || !ok2 || t <= 0 || c < 0 {
		return 0, 0, false
	}
	return c, t, true
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case int64:
		return float64(n), true
	case int:
		return float64(n), true
	case float64:
		return n, !math.IsNaN(n) && !math.IsInf(n, 0)
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case *big.Int:
		f, _ := new(big.Float).SetInt(n).Float64()
		return f, true
	case string:
		f, err := strconv.ParseFloat(n, 64)
		return f, err == nil && !math.IsNaN(f) && !math.IsInf(f, 0)
	}
	return 0, false
}

func fmtNum(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatInt(int64(f), 10)
	}
	return strconv.FormatFloat(f, 'f', 1, 64)
}

func compactMeta(raw json.RawMessage) string {
	return strings.TrimSuffix(fitWidth(prettyJSON(raw, false), 120), "\n")
}
