package celery

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ReprLimit is where Celery cuts argsrepr and kwargsrepr
// (argsrepr_maxsize, kwargsrepr_maxsize).
const ReprLimit = 1024

// reprLevels is saferepr's maxlevels: containers nested deeper show as
// [...] or {...}.
const reprLevels = 3

// ArgsRepr is Celery's argsrepr header: saferepr(args, 1024) of the
// positional arguments as a tuple, as the worker will see them after
// decoding the JSON body: "(2, 3)", "(2,)", "()".
func ArgsRepr(args []any) string {
	if s, ok := flatArgsRepr(args); ok {
		return s
	}
	return saferepr(pyTuple(toPy(args).([]any)), ReprLimit)
}

// KwargsRepr is Celery's kwargsrepr header: saferepr(kwargs, 1024), keys in
// the order the JSON body has them (sorted).
func KwargsRepr(kwargs map[string]any) string {
	if len(kwargs) == 0 {
		return "{}"
	}
	if s, ok := flatKwargsRepr(kwargs); ok {
		return s
	}
	return saferepr(toPy(kwargs), ReprLimit)
}

// flatArgsRepr is ArgsRepr for the common case, written directly: every
// argument a scalar (None, a bool, a number or a valid UTF-8 string), and
// the whole well under the limit, where saferepr cuts nothing. ok is false
// for anything else, which saferepr writes.
func flatArgsRepr(args []any) (string, bool) {
	b := make([]byte, 0, 16*len(args)+4)
	b = append(b, '(')
	for i, a := range args {
		if i > 0 {
			b = append(b, ", "...)
		}
		var ok bool
		if b, ok = appendScalarRepr(b, a); !ok {
			return "", false
		}
	}
	if len(args) == 1 {
		b = append(b, ',')
	}
	b = append(b, ')')
	// Below the limit, no token meets a budget it would exceed (see
	// saferepr), so nothing is cut.
	if utf8.RuneCount(b) >= ReprLimit {
		return "", false
	}
	return string(b), true
}

// flatKwargsRepr is KwargsRepr's flatArgsRepr.
func flatKwargsRepr(kwargs map[string]any) (string, bool) {
	keys := make([]string, 0, len(kwargs))
	for k := range kwargs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b := make([]byte, 0, 24*len(kwargs)+2)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ", "...)
		}
		var ok bool
		if b, ok = appendScalarRepr(b, k); !ok {
			return "", false
		}
		b = append(b, ": "...)
		if b, ok = appendScalarRepr(b, kwargs[k]); !ok {
			return "", false
		}
	}
	b = append(b, '}')
	if utf8.RuneCount(b) >= ReprLimit {
		return "", false
	}
	return string(b), true
}

// appendScalarRepr appends saferepr's text for a scalar v; ok is false if
// v is not one.
func appendScalarRepr(b []byte, v any) ([]byte, bool) {
	switch t := v.(type) {
	case nil:
		return append(b, "None"...), true
	case bool:
		if t {
			return append(b, "True"...), true
		}
		return append(b, "False"...), true
	case string:
		if !utf8.ValidString(t) {
			return b, false
		}
		b = append(b, '\'')
		for i := 0; i < len(t); i++ {
			if t[i] == '\'' {
				b = append(b, '\\')
			}
			b = append(b, t[i])
		}
		return append(b, '\''), true
	case int:
		return strconv.AppendInt(b, int64(t), 10), true
	case int8:
		return strconv.AppendInt(b, int64(t), 10), true
	case int16:
		return strconv.AppendInt(b, int64(t), 10), true
	case int32:
		return strconv.AppendInt(b, int64(t), 10), true
	case int64:
		return strconv.AppendInt(b, t, 10), true
	case uint:
		return strconv.AppendUint(b, uint64(t), 10), true
	case uint8:
		return strconv.AppendUint(b, uint64(t), 10), true
	case uint16:
		return strconv.AppendUint(b, uint64(t), 10), true
	case uint32:
		return strconv.AppendUint(b, uint64(t), 10), true
	case uint64:
		return strconv.AppendUint(b, t, 10), true
	case float64:
		return append(b, PyFloat(t, 64)...), true
	case float32:
		return append(b, PyFloat(float64(t), 32)...), true
	}
	return b, false
}

// Python values a JSON body decodes into.
type (
	pyTuple []any
	pyDict  []pyItem // in key order
	pyItem  struct {
		k string
		v any
	}
	pyNum string // an int or float literal, as Python's str() writes it
)

// toPy turns a Go value into what Python's json module makes of its JSON
// encoding: None, bool, int and float as pyNum, str, list ([]any) and dict
// (pyDict, keys sorted as AppendJSON writes them).
func toPy(v any) any {
	switch t := v.(type) {
	case nil:
		return nil
	case bool, string:
		return t
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return pyNum(fmt.Sprint(t))
	case float64:
		return pyNum(PyFloat(t, 64))
	case float32:
		return pyNum(PyFloat(float64(t), 32))
	case *big.Int:
		if t == nil {
			return nil
		}
		return pyNum(t.String())
	case json.Number:
		return numberToPy(string(t))
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = toPy(x)
		}
		return out
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d := make(pyDict, len(keys))
		for i, k := range keys {
			d[i] = pyItem{k, toPy(t[k])}
		}
		return d
	}
	// Anything else: what its JSON says.
	b, err := AppendJSON(nil, v)
	if err != nil {
		return fmt.Sprintf("<unrepresentable %T>", v)
	}
	py, err := jsonToPy(b)
	if err != nil {
		return fmt.Sprintf("<unrepresentable %T>", v)
	}
	return py
}

func numberToPy(s string) any {
	if strings.ContainsAny(s, ".eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return pyNum(s)
		}
		return pyNum(PyFloat(f, 64))
	}
	return pyNum(s)
}

// jsonToPy decodes JSON keeping the key order of objects.
func jsonToPy(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var read func() (any, error)
	read = func() (any, error) {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '[':
				out := []any{}
				for dec.More() {
					v, err := read()
					if err != nil {
						return nil, err
					}
					out = append(out, v)
				}
				_, err := dec.Token()
				return out, err
			case '{':
				d := pyDict{}
				for dec.More() {
					kt, err := dec.Token()
					if err != nil {
						return nil, err
					}
					v, err := read()
					if err != nil {
						return nil, err
					}
					d = append(d, pyItem{kt.(string), v})
				}
				_, err := dec.Token()
				return d, err
			}
		case json.Number:
			return numberToPy(string(t)), nil
		case string, bool, nil:
			return t, nil
		}
		return nil, fmt.Errorf("unexpected token %v", tok)
	}
	return read()
}

// ---- saferepr ---------------------------------------------------------------
//
// A port of celery.utils.saferepr: a streaming repr that stops once maxlen
// characters are written, and then closes the containers still open with
// whatever closing brackets are left in the stream (so that, as in
// Python, the bracket whose turn came when the budget ran out is lost).
// Strings are quoted with single quotes, only ' escaped, and cut with
// Celery's truncate (at the last space before the limit, plus "...").

type litTok struct {
	value    string
	truncate bool // a separator: dropped from the closing tail
	dir      int
}

var (
	litDictStart  = &litTok{"{", false, +1}
	litDictKVSep  = &litTok{": ", true, 0}
	litDictEnd    = &litTok{"}", false, -1}
	litListStart  = &litTok{"[", false, +1}
	litListEnd    = &litTok{"]", false, -1}
	litListSep    = &litTok{", ", true, 0}
	litTupleStart = &litTok{"(", false, +1}
	litTupleEnd   = &litTok{")", false, -1}
	litTupleEndSV = &litTok{",)", false, -1}
)

type keyTok struct{ k string }
type quotedTok struct{ s string }

// reprStream is the chain of items still to be written.
type reprStream struct {
	items []any
	level int
}

func (s *reprStream) next() (any, bool) {
	for len(s.items) > 0 {
		v := s.items[0]
		s.items = s.items[1:]
		switch t := v.(type) {
		case *litTok:
			s.level += t.dir
			return t, true
		case keyTok, quotedTok:
			return t, true
		case nil:
			return "None", true
		case bool:
			if t {
				return "True", true
			}
			return "False", true
		case pyNum:
			return string(t), true
		case string:
			return quotedTok{t}, true
		}
		var start, end *litTok
		var body []any
		switch t := v.(type) {
		case pyTuple:
			start, end = litTupleStart, litTupleEnd
			if len(t) == 1 {
				end = litTupleEndSV
			}
			body = chainList(t)
		case []any:
			start, end = litListStart, litListEnd
			body = chainList(t)
		case pyDict:
			start, end = litDictStart, litDictEnd
			for i, it := range t {
				body = append(body, keyTok{it.k}, litDictKVSep, it.v)
				if i < len(t)-1 {
					body = append(body, litListSep)
				}
			}
		default:
			return fmt.Sprint(t), true
		}
		if s.level >= reprLevels {
			return start.value + "..." + end.value, true
		}
		rest := s.items
		s.items = make([]any, 0, len(body)+2+len(rest))
		s.items = append(s.items, start)
		s.items = append(s.items, body...)
		s.items = append(s.items, end)
		s.items = append(s.items, rest...)
	}
	return nil, false
}

func chainList(xs []any) []any {
	out := make([]any, 0, 2*len(xs))
	for i, x := range xs {
		out = append(out, x)
		if i < len(xs)-1 {
			out = append(out, litListSep)
		}
	}
	return out
}

// saferepr writes v with a budget of maxlen characters (0: no limit).
func saferepr(v any, maxlen int) string {
	var b strings.Builder
	s := &reprStream{items: []any{v}}
	limited := maxlen > 0
	for {
		tok, ok := s.next()
		if !ok {
			break
		}
		if limited && maxlen <= 0 {
			b.WriteString(", ...")
			for _, rest := range s.items {
				if l, ok := rest.(*litTok); ok && !l.truncate {
					b.WriteString(l.value)
				}
			}
			return b.String()
		}
		var val string
		switch t := tok.(type) {
		case *litTok:
			val = t.value
		case keyTok:
			val = saferepr(t.k, maxlen)
		case quotedTok:
			val = formatChars(t.s, maxlen)
		case string:
			val = truncate(t, maxlen)
		}
		b.WriteString(val)
		if limited {
			maxlen -= utf8.RuneCountInString(val)
		}
	}
	return b.String()
}

// formatChars is Celery's _format_chars for a str.
func formatChars(s string, maxlen int) string {
	return "'" + strings.ReplaceAll(truncate(s, maxlen), "'", `\'`) + "'"
}

// truncate is celery.utils.text.truncate: at maxlen characters or more, cut
// to maxlen, then back to the last space, and add "...".
func truncate(s string, maxlen int) string {
	if maxlen <= 0 || utf8.RuneCountInString(s) < maxlen {
		return s
	}
	cut := 0
	for i := range s {
		if cut == maxlen {
			s = s[:i]
			break
		}
		cut++
	}
	if i := strings.LastIndexByte(s, ' '); i >= 0 {
		s = s[:i]
	}
	return s + "..."
}
