package daemon

import (
	"runtime"
	"runtime/debug"

	"github.com/banger/banger/internal/api"
)

// VersionInfo describes this binary.
func VersionInfo() api.VersionInfo {
	v := api.VersionInfo{Version: Version, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v.Commit = s.Value
			}
		}
	}
	return v
}
