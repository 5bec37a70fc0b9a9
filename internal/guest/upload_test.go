package guest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUploadScripts(t *testing.T) {
	write, install := uploadScripts("/root/my file", "/root/my file.banger-00", 0o640)
	if want := "set -C; umask 077; cat > '/root/my file.banger-00'"; write != want {
		t.Errorf("write script %q, want %q", write, want)
	}
	if want := "chmod 0640 '/root/my file.banger-00' && mv -f '/root/my file.banger-00' '/root/my file'"; install != want {
		t.Errorf("install script %q, want %q", install, want)
	}
}

// leftovers lists the entries of dir other than keep.
func leftovers(t *testing.T, dir string, keep ...string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var extra []string
	for _, e := range entries {
		found := false
		for _, k := range keep {
			found = found || e.Name() == k
		}
		if !found {
			extra = append(extra, e.Name())
		}
	}
	return extra
}

func TestUpload(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "it's a file")
	data := make([]byte, 1<<20)
	rand.Read(data)
	if err := Upload(context.Background(), c, path, 0o640, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("uploaded file: %d bytes, %v; want the %d bytes sent", len(got), err, len(data))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %04o, want 0640", fi.Mode().Perm())
	}

	// Replacing it, with another mode, and an empty body.
	if err := Upload(context.Background(), c, path, 0o755, nil); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Size() != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("replaced file: size %d mode %04o, want 0 and 0755", fi.Size(), fi.Mode().Perm())
	}
	if extra := leftovers(t, dir, "it's a file"); len(extra) > 0 {
		t.Errorf("left behind: %v", extra)
	}
}

func TestUploadFailures(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "file")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}

	// A reader failing half-way leaves the old file and no partial one.
	in := &failingReader{data: []byte("half of it"), err: errors.New("source vanished")}
	err := Upload(context.Background(), c, path, 0o644, in)
	if err == nil || !strings.Contains(err.Error(), "source vanished") {
		t.Fatalf("err = %v, want the read error", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Errorf("file is %q after a failed upload, want it untouched", got)
	}
	if extra := leftovers(t, dir, "file"); len(extra) > 0 {
		t.Errorf("left behind: %v", extra)
	}

	// A missing directory is the guest's error, quoted.
	err = Upload(context.Background(), c, filepath.Join(dir, "no-such-dir", "file"), 0o644, strings.NewReader("x"))
	if err == nil || !strings.Contains(err.Error(), "exited with status") || !strings.Contains(err.Error(), "no-such-dir") {
		t.Fatalf("err = %v, want the guest's message", err)
	}

	for _, tt := range []struct {
		path string
		mode os.FileMode
		want string
	}{
		{"", 0o644, "not a file path"},
		{"/root/dir/", 0o644, "not a file path"},
		{path, os.ModeSetuid | 0o755, "allowed are 0000-0777"},
	} {
		if err := Upload(context.Background(), c, tt.path, tt.mode, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Upload(%q, %v) = %v, want an error containing %q", tt.path, tt.mode, err, tt.want)
		}
	}
}
