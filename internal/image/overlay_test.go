package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestOverlayDirsOpen: under a umask of 077 (as bangerd runs) the
// overlay's directories are still 0755, since they become the image's /usr
// and /etc; a user copy keeps its own modes.
func TestOverlayDirsOpen(t *testing.T) {
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed")
	}
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	bin := filepath.Join(dir, "banger-init")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	private := filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "overlay")
	if err := os.Mkdir(overlay, 0o700); err != nil {
		t.Fatal(err)
	}
	opts := BuildOptions{InitBinary: bin, Copies: []Copy{{Src: private, Dst: "/opt/private"}}}
	if _, err := writeOverlay(context.Background(), overlay, opts, Recipe{Init: InitFast}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", "usr", "usr/local", "usr/local/sbin", "etc", "etc/ssh", "opt"} {
		fi, err := os.Stat(filepath.Join(overlay, d))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("overlay/%s: %v, %v; want 0755", d, fi.Mode(), err)
		}
	}
	if fi, err := os.Stat(filepath.Join(overlay, "opt/private")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("user copy: %v, %v; want its own 0700", fi.Mode(), err)
	}
}
