package proc

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHolds sees this process's own descriptors: none, read-only, then
// writable, also after the file is renamed.
func TestHolds(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	me := os.Getpid()
	if open, w := Holds(me, p); open || w {
		t.Fatalf("nothing open: %v %v", open, w)
	}
	ro, _ := os.Open(p)
	defer ro.Close()
	if open, w := Holds(me, p); !open || w {
		t.Fatalf("read-only: %v %v", open, w)
	}
	rw, _ := os.OpenFile(p, os.O_RDWR, 0)
	defer rw.Close()
	q := p + ".moved"
	if err := os.Rename(p, q); err != nil {
		t.Fatal(err)
	}
	if open, w := Holds(me, q); !open || !w {
		t.Fatalf("writable, renamed: %v %v", open, w)
	}
	if open, _ := Holds(me, p); open {
		t.Fatal("a path that is gone is held")
	}
}
