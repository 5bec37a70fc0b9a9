package cli

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseCp(t *testing.T) {
	for _, tc := range []struct {
		src, dst       string
		wantS, wantD   cpLoc
		wantErrContain string
	}{
		{src: "dev:/etc/hosts", dst: "out", wantS: cpLoc{VM: "dev", Path: "/etc/hosts"}, wantD: cpLoc{Path: "out"}},
		{src: "./a:b", dst: "dev:rel/x", wantS: cpLoc{Path: "./a:b"}, wantD: cpLoc{VM: "dev", Path: "/root/rel/x"}},
		{src: "/abs:x", dst: "dev:", wantS: cpLoc{Path: "/abs:x"}, wantD: cpLoc{VM: "dev", Path: "/root"}},
		{src: "-", dst: "dev:/tmp/f", wantS: cpLoc{Stdio: true}, wantD: cpLoc{VM: "dev", Path: "/tmp/f"}},
		{src: "dev:/a/../b/", dst: "-", wantS: cpLoc{VM: "dev", Path: "/b"}, wantD: cpLoc{Stdio: true}},
		{src: "a", dst: "b", wantErrContain: "both sides are local"},
		{src: "-", dst: "-", wantErrContain: "both sides are local"},
		{src: "x:/a", dst: "y:/b", wantErrContain: "both sides are in a VM"},
		{src: ":/a", dst: "b", wantErrContain: "names no VM"},
		{src: "", dst: "dev:/b", wantErrContain: "empty"},
	} {
		s, d, err := parseCp(tc.src, tc.dst)
		if tc.wantErrContain != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErrContain) {
				t.Errorf("parseCp(%q, %q) err = %v, want %q", tc.src, tc.dst, err, tc.wantErrContain)
			}
			continue
		}
		if err != nil || s != tc.wantS || d != tc.wantD {
			t.Errorf("parseCp(%q, %q) = %+v, %+v, %v", tc.src, tc.dst, s, d, err)
		}
	}
}

func TestTreeRoundTrip(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "sub dir"), 0o750)
	os.WriteFile(filepath.Join(src, "sub dir", "run\nme"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("sub dir/run\nme", filepath.Join(src, "link"))
	var buf bytes.Buffer
	if err := writeTree(src, &buf); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := extractTree(dst, &buf); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dst, "sub dir", "run\nme"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("file: %v, %v", st, err)
	}
	if st, _ := os.Stat(filepath.Join(dst, "sub dir")); st.Mode().Perm() != 0o750 {
		t.Errorf("dir mode %v", st.Mode())
	}
	if l, err := os.Readlink(filepath.Join(dst, "link")); err != nil || l != "sub dir/run\nme" {
		t.Errorf("link %q, %v", l, err)
	}
}

// A guest's archive cannot write outside the destination, neither by name
// nor through a symlink it made first.
func TestExtractTreeHostile(t *testing.T) {
	outside := t.TempDir()
	for name, entries := range map[string][]tar.Header{
		"dotdot":   {{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"absolute": {{Name: "/" + filepath.Join(outside, "escape"), Typeflag: tar.TypeReg, Mode: 0o644}},
		"through symlink": {
			{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "evil/escape", Typeflag: tar.TypeReg, Mode: 0o644},
		},
		"symlink at file name": {
			{Name: "escape", Typeflag: tar.TypeSymlink, Linkname: filepath.Join(outside, "escape")},
			{Name: "escape", Typeflag: tar.TypeReg, Mode: 0o644},
		},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range entries {
			h := h
			tw.WriteHeader(&h)
		}
		tw.Close()
		_ = extractTree(t.TempDir(), &buf)
		if _, err := os.Lstat(filepath.Join(outside, "escape")); err == nil {
			t.Fatalf("%s: wrote outside the destination", name)
		}
	}
}

func TestPlaceTree(t *testing.T) {
	dir := t.TempDir()
	mk := func(root string) string {
		p := filepath.Join(dir, root)
		os.MkdirAll(filepath.Join(p, "sub"), 0o755)
		os.WriteFile(filepath.Join(p, "sub", "new"), []byte("new"), 0o644)
		os.WriteFile(filepath.Join(p, "top"), []byte("new"), 0o600)
		return p
	}
	// A new target: renamed into place.
	if err := placeTree(mk("tmp1"), filepath.Join(dir, "fresh")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "fresh", "sub", "new")); err != nil || string(b) != "new" {
		t.Fatalf("fresh: %q %v", b, err)
	}
	// An existing one: merged, files replaced, others kept.
	old := filepath.Join(dir, "old")
	os.MkdirAll(filepath.Join(old, "sub"), 0o755)
	os.WriteFile(filepath.Join(old, "sub", "keep"), []byte("keep"), 0o644)
	os.WriteFile(filepath.Join(old, "top"), []byte("old"), 0o644)
	if err := placeTree(mk("tmp2"), old); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"sub/keep": "keep", "sub/new": "new", "top": "new"} {
		if b, err := os.ReadFile(filepath.Join(old, p)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
	if err := placeTree(mk("tmp3"), filepath.Join(old, "top")); err == nil {
		t.Error("placeTree onto a file worked")
	}
}
