// Package image owns banger's root filesystem images as files: building one
// from Debian packages with mmdebstrap (debootstrap as fallback) into an
// ext4 file without mounting it, the build recipe and its cache, and
// inspecting an ext4 file offered for import (through debugfs, no mount).
//
// It must not touch the daemon's store, VMs or any mount on the host; it
// writes only the destination, its temporary work directory and the cache.
package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// recipeVersion changes whenever Build makes a different image from the
// same inputs, so old cache entries are not reused.
const recipeVersion = 4

// Init modes.
const (
	InitFast    = "fast"    // banger-init is PID 1
	InitSystemd = "systemd" // systemd is PID 1, banger-init setup runs as a unit
)

// BasePackages are in every image: what banger's guest access, sessions,
// workspaces and agents rely on.
var BasePackages = []string{
	"openssh-server", "bash", "git", "coreutils", "iproute2", "ca-certificates",
	"procps", "util-linux", "e2fsprogs", "python3", "sudo",
}

// Script is a shell script run in the new root after its packages.
type Script struct {
	Name    string // shown in progress and errors
	Content []byte
}

// Copy puts a host file or directory Src into the image at Dst (absolute).
type Copy struct {
	Src, Dst string
}

// Recipe is everything that decides an image's content. Its JSON is kept
// with the image; its Key is the build cache key.
type Recipe struct {
	Version    int          `json:"recipe_version"`
	Distro     string       `json:"distro"`
	Suite      string       `json:"suite"`
	Mirror     string       `json:"mirror"`
	Packages   []string     `json:"packages"` // sorted, unique, base included
	Init       string       `json:"init"`
	SizeBytes  int64        `json:"size_bytes"`
	Scripts    []RecipeFile `json:"scripts,omitempty"`
	Copies     []RecipeFile `json:"copies,omitempty"`
	InitBinary string       `json:"banger_init"` // "sha256:<hex>"
}

// RecipeFile names an input by its content hash.
type RecipeFile struct {
	Name   string `json:"name"` // script name or copy destination
	Source string `json:"source,omitempty"`
	SHA256 string `json:"sha256"`
}

// Key is the sha256 of the recipe's canonical JSON.
func (r Recipe) Key() string {
	sum := sha256.Sum256([]byte(r.JSON()))
	return hex.EncodeToString(sum[:])
}

// JSON is the recipe's canonical JSON (what Key hashes, minus the Source
// paths of copies, which do not change the content).
func (r Recipe) JSON() string {
	c := r
	c.Copies = nil
	for _, f := range r.Copies {
		f.Source = ""
		c.Copies = append(c.Copies, f)
	}
	b, _ := json.Marshal(c)
	return string(b)
}

var (
	packageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	suiteRE   = regexp.MustCompile(`^[a-z][a-z0-9-]{1,30}$`)
)

// normalisePackages adds the base packages (and systemd-sysv for systemd
// images), validates the names and returns them sorted and unique.
func normalisePackages(extra []string, init string) ([]string, error) {
	set := map[string]bool{}
	for _, p := range BasePackages {
		set[p] = true
	}
	if init == InitSystemd {
		set["systemd-sysv"] = true
	}
	for _, p := range extra {
		p = strings.TrimSpace(p)
		if !packageRE.MatchString(p) {
			return nil, fmt.Errorf("package name %q invalid (allowed: Debian package names, [a-z0-9][a-z0-9+.-]+)", p)
		}
		set[p] = true
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// hashBytes returns "sha256:<hex>".
func hashBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// hashFile hashes a file, or a directory tree (paths, modes, link targets
// and contents), so a copy's key changes when anything in it does.
func hashFile(path string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(path, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%o\x00", rel, info.Mode())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			io.WriteString(h, t)
		case info.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
		}
		h.Write([]byte{0})
		return nil
	})
	if err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
