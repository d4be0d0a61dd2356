package amqp

import (
	"encoding/json"
	"fmt"
	"math/big"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// reprLimit is where Celery truncates argsrepr and kwargsrepr.
const reprLimit = 1024

// argsRepr renders args as Python's repr of a tuple, e.g. "(2, 3)", "(2,)".
func argsRepr(args []any) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, a := range args {
		if i > 0 {
			b.WriteString(", ")
		}
		pyRepr(&b, a, 0)
	}
	if len(args) == 1 {
		b.WriteByte(',')
	}
	b.WriteByte(')')
	return truncateRepr(b.String())
}

// kwargsRepr renders kwargs as Python's repr of a dict, keys in sorted order.
func kwargsRepr(kwargs map[string]any) string {
	var b strings.Builder
	pyRepr(&b, kwargs, 0)
	return truncateRepr(b.String())
}

func truncateRepr(s string) string {
	if len(s) <= reprLimit {
		return s
	}
	cut := reprLimit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func pyRepr(b *strings.Builder, v any, depth int) {
	if depth > 32 || b.Len() > reprLimit+16 {
		b.WriteString("...")
		return
	}
	switch t := v.(type) {
	case nil:
		b.WriteString("None")
	case bool:
		if t {
			b.WriteString("True")
		} else {
			b.WriteString("False")
		}
	case string:
		pyString(b, t)
	case *big.Int:
		b.WriteString(t.String())
	case json.Number:
		b.WriteString(t.String())
	case fmt.Stringer:
		pyString(b, t.String())
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			pyString(b, k)
			b.WriteString(": ")
			pyRepr(b, t[k], depth+1)
		}
		b.WriteByte('}')
	case []any:
		b.WriteByte('[')
		for i, x := range t {
			if i > 0 {
				b.WriteString(", ")
			}
			pyRepr(b, x, depth+1)
		}
		b.WriteByte(']')
	default:
		rv := reflect.ValueOf(v)
		switch rv.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			b.WriteString(strconv.FormatInt(rv.Int(), 10))
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			b.WriteString(strconv.FormatUint(rv.Uint(), 10))
		case reflect.Float32, reflect.Float64:
			f := rv.Float()
			s := strconv.FormatFloat(f, 'g', -1, 64)
			if !strings.ContainsAny(s, ".eEn") {
				s += ".0"
			}
			b.WriteString(s)
		case reflect.Slice, reflect.Array:
			b.WriteByte('[')
			for i := 0; i < rv.Len(); i++ {
				if i > 0 {
					b.WriteString(", ")
				}
				pyRepr(b, rv.Index(i).Interface(), depth+1)
			}
			b.WriteByte(']')
		case reflect.Map:
			keys := rv.MapKeys()
			sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
			b.WriteByte('{')
			for i, k := range keys {
				if i > 0 {
					b.WriteString(", ")
				}
				pyRepr(b, k.Interface(), depth+1)
				b.WriteString(": ")
				pyRepr(b, rv.MapIndex(k).Interface(), depth+1)
			}
			b.WriteByte('}')
		case reflect.Pointer:
			if rv.IsNil() {
				b.WriteString("None")
			} else {
				pyRepr(b, rv.Elem().Interface(), depth+1)
			}
		default:
			fmt.Fprintf(b, "%v", v)
		}
	}
}

// pyString writes s quoted as Python's repr does: single quotes unless the
// text contains a single quote and no double quote.
func pyString(b *strings.Builder, s string) {
	q := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		q = '"'
	}
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == rune(q) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
}
