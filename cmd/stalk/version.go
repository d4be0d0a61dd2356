package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// buildInfo is what the binary knows about how it was built.
type buildInfo struct {
	Version  string `json:"version"`            // the module version, or "(devel)"
	Revision string `json:"revision,omitempty"` // vcs.revision
	Time     string `json:"time,omitempty"`     // vcs.time
	Modified bool   `json:"modified,omitempty"` // vcs.modified: built from a work tree with changes
	Go       string `json:"go"`
}

// readBuildInfo reads the module version and the VCS stamp from the
// binary: "go install github.com/stalk-dev/stalk/cmd/stalk@v1.2.3"
// records v1.2.3; a build from a checkout records "(devel)", or with Go
// 1.24+ a pseudo-version, and the revision and commit time.
func readBuildInfo() buildInfo {
	bi := buildInfo{Version: "(devel)", Go: runtime.Version()}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	if v := info.Main.Version; v != "" {
		bi.Version = v
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Revision = s.Value
		case "vcs.time":
			bi.Time = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	return bi
}

// String is the one line --version prints, e.g.
//
//	stalk v1.2.0 (go1.26.1)
//	stalk (devel) revision 77d1d7d6a9e2, 2026-12-01T10:00:00Z, modified (go1.26.1)
func (bi buildInfo) String() string {
	var b strings.Builder
	b.WriteString("stalk " + bi.Version)
	if bi.Revision != "" {
		rev := bi.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		// A pseudo-version names the revision already; say it anyway, it
		// is what 'git show' takes.
		b.WriteString(" revision " + rev)
		if bi.Time != "" {
			b.WriteString(", " + bi.Time)
		}
		if bi.Modified {
			b.WriteString(", modified")
		}
	}
	fmt.Fprintf(&b, " (%s)", bi.Go)
	return b.String()
}

func (a *app) printVersion() error {
	bi := readBuildInfo()
	if a.g.json {
		a.jsonLine(bi)
		return nil
	}
	fmt.Fprintln(a.stdout, bi.String())
	return nil
}
