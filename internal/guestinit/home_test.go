package guestinit

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestSeedUserHome(t *testing.T) {
	root := t.TempDir()
	home := filepath.Join(root, UserHome)
	if err := os.MkdirAll(filepath.Join(home, ".config"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".bashrc"), []byte("PS1=x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(home, "link")); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		for _, p := range []string{home, filepath.Join(home, ".bashrc")} {
			if err := os.Lchown(p, 1000, 1000); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(root, WorkMount), 0o700); err != nil {
		t.Fatal(err)
	}

	got, err := SeedUserHome(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, WorkMount, WorkUserHome); got != want {
		t.Fatalf("SeedUserHome = %q, want %q", got, want)
	}
	if b, err := os.ReadFile(filepath.Join(got, ".bashrc")); err != nil || string(b) != "PS1=x\n" {
		t.Fatalf(".bashrc on the work disk: %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(got, "link")); err != nil || l != "/etc/passwd" {
		t.Fatalf("link: %q, %v (want the link kept, not followed)", l, err)
	}
	fi, err := os.Stat(got)
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("home mode %v, %v; want 0750", fi.Mode(), err)
	}
	if os.Geteuid() == 0 {
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1000 || st.Gid != 1000 {
			t.Fatalf("home owned by %d:%d, want 1000:1000", st.Uid, st.Gid)
		}
	}
	if _, err := os.Stat(got + ".seeding"); !os.IsNotExist(err) {
		t.Fatalf("the seeding directory is left: %v", err)
	}

	// A second boot keeps what the user wrote.
	if err := os.WriteFile(filepath.Join(got, "mine"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".profile"), []byte("new in the image"), 0o644); err != nil {
		t.Fatal(err)
	}
	if again, err := SeedUserHome(root); err != nil || again != got {
		t.Fatalf("second SeedUserHome = %q, %v", again, err)
	}
	if b, _ := os.ReadFile(filepath.Join(got, "mine")); string(b) != "kept" {
		t.Fatalf("the user's file after a second boot: %q", b)
	}
	if _, err := os.Stat(filepath.Join(got, ".profile")); !os.IsNotExist(err) {
		t.Fatalf("a seeded home was seeded again: %v", err)
	}
}

func TestSeedUserHomeWithoutAccount(t *testing.T) {
	root := t.TempDir()
	if got, err := SeedUserHome(root); err != nil || got != "" {
		t.Fatalf("SeedUserHome without %s = %q, %v; want \"\", nil", UserHome, got, err)
	}
}

func TestSeedUserHomeRefusesAFileInItsPlace(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, UserHome), 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, WorkMount, WorkUserHome)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", dst); err != nil {
		t.Fatal(err)
	}
	if _, err := SeedUserHome(root); err == nil {
		t.Fatal("SeedUserHome accepted a symlink where the home belongs")
	}
}
