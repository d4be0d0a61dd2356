package readmecheck

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// TestREADMESnippetsAreChecked fails when a Go snippet of the README is not
// in check_test.go, where the compiler checks it. Snippets are compared
// without comments and whitespace, so gofmt's layout does not matter.
func TestREADMESnippetsAreChecked(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("check_test.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := squash(string(src))
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) == 0 {
		t.Fatal("no Go snippets found in the README")
	}
	for i, b := range blocks {
		if !strings.Contains(checked, squash(b[1])) {
			t.Errorf("README Go snippet %d is not in internal/readmecheck/check_test.go:\n%s", i+1, b[1])
		}
	}
	t.Logf("%d README Go snippets, all compiled here", len(blocks))
}

func TestSquash(t *testing.T) {
	for in, want := range map[string]string{
		"a := 1 // one\nb := \"//x\" /* c */": `a:=1b:="//x"`,
		"if err != nil { return err }":        "iferr!=nil{returnerr}",
		"if err != nil {\n\treturn err\n}":    "iferr!=nil{returnerr}",
		"s := `a // b`":                       "s:=`a // b`",
		`f("%s %d", x)`:                       `f("%s %d",x)`,
	} {
		if got := squash(in); got != want {
			t.Errorf("squash(%q) = %q, want %q", in, got, want)
		}
	}
}

// squash drops comments and whitespace outside string literals.
func squash(s string) string {
	var b strings.Builder
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && quote != '`' && i+1 < len(s) {
				b.WriteByte(c)
				i++
				c = s[i]
			} else if c == quote {
				quote = 0
			}
			b.WriteByte(c) // whitespace inside a literal counts
			continue
		case c == '"' || c == '`' || c == '\'':
			quote = c
		case c == '/' && i+1 < len(s) && s[i+1] == '/':
			for i < len(s) && s[i] != '\n' {
				i++
			}
			continue
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			end := strings.Index(s[i+2:], "*/")
			if end < 0 {
				return b.String()
			}
			i += end + 3
			continue
		}
		if !unicode.IsSpace(rune(c)) {
			b.WriteByte(c)
		}
	}
	return b.String()
}
