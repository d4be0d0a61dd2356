package main

import "os"

// isTerminal reports whether f is a terminal. It asks the kernel where it
// can (term_unix.go) and falls back to the file mode.
func isTerminal(f *os.File) bool {
	if ok, known := ttyIoctl(f); known {
		return ok
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && f.Name() != os.DevNull
}

// termWidth returns f's width in columns: from the kernel, then $COLUMNS,
// then 80.
func termWidth(f *os.File) int {
	if w := winWidth(f); w > 0 {
		return w
	}
	if c := os.Getenv("COLUMNS"); c != "" {
		n := 0
		for _, r := range c {
			if r < '0' || r > '9' {
				n = 0
				break
			}
			n = n*10 + int(r-'0')
		}
		if n > 0 {
			return n
		}
	}
	return 80
}
