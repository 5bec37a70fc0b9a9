// Package version says which banger a binary is: the version stamped at
// build time and the commit and Go release it was built from. It is shared
// by the CLI and the daemon so `banger version` compares like with like.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version is set at build time with -ldflags "-X …/internal/version.Version=…".
var Version = "dev"

// Info describes a binary; it is also the wire form of `banger version`.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	GoVersion string `json:"go_version"`
}

// Current describes this binary.
func Current() Info {
	v := Info{Version: Version, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v.Commit = s.Value
			}
		}
	}
	return v
}
