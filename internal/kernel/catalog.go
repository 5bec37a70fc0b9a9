// Package kernel owns banger's guest kernels as files: the embedded catalog
// of kernels banger knows how to fetch, pulling one from distribution
// packages into a directory (ELF vmlinux, bzImage, a busybox initrd with the
// driver modules the guest needs, the default command line), and the pure
// helpers behind it (vmlinux extraction, module dependency order, the
// initrd's cpio archive and /init script).
//
// It must not touch the daemon's store or VMs: the daemon records what Pull
// returns. It runs apt-get and dpkg-deb, never installs anything on the host.
package kernel

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
)

//go:embed catalog.json
var catalogJSON []byte

// Entry is a kernel banger can pull.
type Entry struct {
	Name        string   `json:"name"`        // catalog name, e.g. "debian-cloud-bookworm"
	Description string   `json:"description"` // one line for `kernel list`
	Distro      string   `json:"distro"`      // "debian"
	Suite       string   `json:"suite"`       // distribution release the package comes from
	Package     string   `json:"package"`     // package (or metapackage) holding the kernel
	Cmdline     string   `json:"cmdline"`     // default kernel command line
	Modules     []string `json:"modules"`     // modules the initrd loads (dependencies added)
}

var entryNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Catalog returns the embedded catalog, sorted by name.
func Catalog() ([]Entry, error) {
	return parseCatalog(catalogJSON)
}

// Lookup returns the catalog entry called name.
func Lookup(name string) (Entry, bool) {
	entries, err := Catalog()
	if err != nil {
		return Entry{}, false
	}
	for _, e := range entries {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

// parseCatalog decodes and checks a catalog: names valid and unique, and
// every entry with a distro banger can fetch from.
func parseCatalog(raw []byte) ([]Entry, error) {
	var doc struct {
		Entries []Entry `json:"entries"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("kernel catalog: %w", err)
	}
	seen := map[string]bool{}
	for _, e := range doc.Entries {
		switch {
		case !entryNameRE.MatchString(e.Name):
			return nil, fmt.Errorf("kernel catalog: entry name %q invalid (allowed: [a-z0-9][a-z0-9-]{0,62})", e.Name)
		case seen[e.Name]:
			return nil, fmt.Errorf("kernel catalog: entry %q listed twice", e.Name)
		case e.Distro != "debian":
			return nil, fmt.Errorf("kernel catalog: entry %q has distro %q (allowed: debian)", e.Name, e.Distro)
		case e.Package == "":
			return nil, fmt.Errorf("kernel catalog: entry %q names no package", e.Name)
		}
		seen[e.Name] = true
	}
	sort.Slice(doc.Entries, func(i, j int) bool { return doc.Entries[i].Name < doc.Entries[j].Name })
	return doc.Entries, nil
}
