package image

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPruneCacheKeepsMostRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	for i := 0; i < 5; i++ {
		base := filepath.Join(dir, fmt.Sprintf("k%d", i))
		for _, ext := range []string{".ext4", ".json"} {
			if err := os.WriteFile(base+ext, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// k0 is the oldest, k4 the newest use.
		used := now.Add(time.Duration(i-10) * time.Minute)
		if err := os.Chtimes(base+".json", used, used); err != nil {
			t.Fatal(err)
		}
	}
	// A hit on k0 makes it recent again.
	if err := os.Chtimes(filepath.Join(dir, "k0.json"), now, now); err != nil {
		t.Fatal(err)
	}
	// A stray temp file is left alone.
	os.WriteFile(filepath.Join(dir, "k9.ext4.tmp"), nil, 0o644)
	if err := pruneCache(dir, 3); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false, false, true, true} {
		for _, ext := range []string{".ext4", ".json"} {
			_, err := os.Stat(filepath.Join(dir, fmt.Sprintf("k%d%s", i, ext)))
			if got := err == nil; got != want {
				t.Errorf("k%d%s kept=%v, want %v", i, ext, got, want)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "k9.ext4.tmp")); err != nil {
		t.Errorf("temp file removed: %v", err)
	}
}
