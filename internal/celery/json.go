package celery

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"sort"
	"strconv"
	"unicode/utf8"
)

// AppendJSON appends v encoded as JSON the way a Python worker will read
// it back: floats always as floats (2.0, not 2; 1e+20, not
// 100000000000000000000), in Python's float repr; integers exact, however
// large; map keys sorted. Values of other types (structs, types with a
// MarshalJSON) are encoded by encoding/json; their float fields then follow
// encoding/json (2.0 is written 2).
func AppendJSON(dst []byte, v any) ([]byte, error) {
	return appendJSON(dst, v, 0)
}

const maxJSONDepth = 512

func appendJSON(dst []byte, v any, depth int) ([]byte, error) {
	if depth > maxJSONDepth {
		return nil, fmt.Errorf("value nested more than %d levels deep", maxJSONDepth)
	}
	switch t := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case bool:
		return strconv.AppendBool(dst, t), nil
	case string:
		return appendJSONString(dst, t), nil
	case int:
		return strconv.AppendInt(dst, int64(t), 10), nil
	case int8:
		return strconv.AppendInt(dst, int64(t), 10), nil
	case int16:
		return strconv.AppendInt(dst, int64(t), 10), nil
	case int32:
		return strconv.AppendInt(dst, int64(t), 10), nil
	case int64:
		return strconv.AppendInt(dst, t, 10), nil
	case uint:
		return strconv.AppendUint(dst, uint64(t), 10), nil
	case uint8:
		return strconv.AppendUint(dst, uint64(t), 10), nil
	case uint16:
		return strconv.AppendUint(dst, uint64(t), 10), nil
	case uint32:
		return strconv.AppendUint(dst, uint64(t), 10), nil
	case uint64:
		return strconv.AppendUint(dst, t, 10), nil
	case float64:
		return appendFloat(dst, t, 64)
	case float32:
		return appendFloat(dst, float64(t), 32)
	case json.Number:
		if !json.Valid([]byte(t)) || t == "" {
			return nil, fmt.Errorf("invalid number %q", string(t))
		}
		return append(dst, t...), nil
	case *big.Int:
		if t == nil {
			return append(dst, "null"...), nil
		}
		return t.Append(dst, 10), nil
	case json.RawMessage:
		if !json.Valid(t) {
			return nil, fmt.Errorf("invalid raw JSON")
		}
		return append(dst, bytes.TrimSpace(t)...), nil
	case []any:
		dst = append(dst, '[')
		for i, x := range t {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendJSON(dst, x, depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, k)
			dst = append(dst, ':')
			var err error
			if dst, err = appendJSON(dst, t[k], depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	case json.Marshaler:
		return appendMarshaled(dst, t)
	}
	return appendReflect(dst, reflect.ValueOf(v), depth)
}

// appendReflect handles slices, arrays, maps with string keys and pointers
// of any element type, so that floats inside them are written as floats;
// everything else goes to encoding/json.
func appendReflect(dst []byte, rv reflect.Value, depth int) ([]byte, error) {
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return append(dst, "null"...), nil
		}
		if _, ok := rv.Interface().(json.Marshaler); ok {
			break
		}
		return appendJSON(dst, rv.Elem().Interface(), depth+1)
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.IsNil() {
			return append(dst, "null"...), nil
		}
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			break // []byte: base64, as encoding/json writes it
		}
		if _, ok := rv.Interface().(json.Marshaler); ok {
			break
		}
		dst = append(dst, '[')
		for i := 0; i < rv.Len(); i++ {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendJSON(dst, rv.Index(i).Interface(), depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String || rv.Type().Key() != reflect.TypeFor[string]() {
			break
		}
		if rv.IsNil() {
			return append(dst, "null"...), nil
		}
		if _, ok := rv.Interface().(json.Marshaler); ok {
			break
		}
		keys := rv.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, k.String())
			dst = append(dst, ':')
			var err error
			if dst, err = appendJSON(dst, rv.MapIndex(k).Interface(), depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	case reflect.Float32:
		return appendFloat(dst, rv.Float(), 32)
	case reflect.Float64:
		return appendFloat(dst, rv.Float(), 64)
	case reflect.Invalid:
		return append(dst, "null"...), nil
	}
	return appendMarshaled(dst, rv.Interface())
}

func appendMarshaled(dst []byte, v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return append(dst, bytes.TrimSpace(buf.Bytes())...), nil
}

func appendFloat(dst []byte, f float64, bits int) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("unsupported value: %v (JSON has no NaN or infinity)", f)
	}
	return append(dst, PyFloat(f, bits)...), nil
}

// PyFloat formats f as Python's repr(float) does: the shortest digits that
// read back as f (for bits 32, as the float32 it came from), in fixed
// notation with at least one decimal ("2.0", "0.0001",
// "1000000000000000.0") while the decimal exponent is from -4 to 15, and in
// scientific notation otherwise ("1e+16", "1e-05", "1.5e+300").
func PyFloat(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	e := strconv.FormatFloat(f, 'e', -1, bits)
	i := len(e) - 1
	for e[i] != 'e' {
		i--
	}
	exp, _ := strconv.Atoi(e[i+1:])
	if exp < -4 || exp > 15 {
		return e // Go writes the exponent as Python does: a sign and at least two digits
	}
	s := strconv.FormatFloat(f, 'f', -1, bits)
	for j := 0; j < len(s); j++ {
		if s[j] == '.' {
			return s
		}
	}
	return s + ".0"
}

// appendJSONString writes s as a JSON string. Unlike encoding/json it does
// not escape <, > and &; invalid UTF-8 becomes U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

const hex = "0123456789abcdef"
