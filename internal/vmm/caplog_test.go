package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCapLog(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "console.log")
	if err := CapLog(log, 100); err != nil {
		t.Fatalf("missing file: %v", err)
	}
	if err := CapLog(log, 0); err == nil {
		t.Fatal("max 0 accepted")
	}

	if err := os.WriteFile(log, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CapLog(log, 100); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(log); string(b) != "short\n" {
		t.Fatalf("a file under the cap changed: %q", b)
	}
	if _, err := os.Stat(log + ".1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file under the cap rotated: %v", err)
	}

	var all strings.Builder
	for i := range 40 {
		fmt.Fprintf(&all, "line %02d\n", i) // 8 bytes a line, 320 in all
	}
	if err := os.WriteFile(log, []byte(all.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CapLog(log, 100); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(log); fi.Size() != 0 {
		t.Fatalf("capped file has %d bytes, want 0", fi.Size())
	}
	// The last 50 bytes, from the first whole line in them.
	kept, _ := os.ReadFile(log + ".1")
	if string(kept) != "line 34\nline 35\nline 36\nline 37\nline 38\nline 39\n" {
		t.Fatalf("kept %q", kept)
	}

	// Again: the old .1 is replaced, not appended to.
	if err := os.WriteFile(log, bytes.Repeat([]byte("x"), 300), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CapLog(log, 100); err != nil {
		t.Fatal(err)
	}
	if kept, _ := os.ReadFile(log + ".1"); string(kept) != strings.Repeat("x", 50) {
		t.Fatalf("second rotation kept %q", kept)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("stray files: %v", ents)
	}

	// A symlink is refused and its target left alone.
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, bytes.Repeat([]byte("y"), 300), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := CapLog(link, 100); err == nil {
		t.Fatal("CapLog followed a symlink")
	}
	if fi, _ := os.Stat(target); fi.Size() != 300 {
		t.Fatalf("symlink target changed to %d bytes", fi.Size())
	}
}

// appenderEnv names the file TestAppender appends to when the test binary
// runs as the writer process.
const appenderEnv = "BANGER_TEST_APPEND_TO"

// TestAppender is the writer process of TestCapLogWhileWriting, not a test:
// it opens the file with O_APPEND, as QEMU's console chardev with append=on
// and proc.StartDetached's output do, and writes 1 KiB each millisecond
// until killed.
func TestAppender(t *testing.T) {
	path := os.Getenv(appenderEnv)
	if path == "" {
		t.Skip("the writer process of TestCapLogWhileWriting")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	line := append(bytes.Repeat([]byte("g"), 1023), '\n')
	for {
		if _, err := f.Write(line); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
}

// While another process appends without end, CapLog keeps the file near
// the cap, also when called from several goroutines at once, and the
// writer's bytes land at the start after each truncation (no hole).
func TestCapLogWhileWriting(t *testing.T) {
	log := filepath.Join(t.TempDir(), "console.log")
	cmd := exec.Command(os.Args[0], "-test.run=^TestAppender$")
	cmd.Env = append(os.Environ(), appenderEnv+"="+log)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()

	const capBytes = 64 << 10
	var (
		mu      sync.Mutex
		biggest int64
		rotated int
	)
	deadline := time.Now().Add(1500 * time.Millisecond)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				fi, err := os.Stat(log)
				if err == nil {
					mu.Lock()
					biggest = max(biggest, fi.Size())
					if fi.Size() > capBytes {
						rotated++
					}
					mu.Unlock()
				}
				if err := CapLog(log, capBytes); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	t.Logf("file peaked at %d bytes under a cap of %d; %d rotations seen", biggest, capBytes, rotated)
	// Slack: 20 ms at ~1 MiB/s, with room for a loaded host's scheduling.
	if biggest > capBytes+512<<10 {
		t.Fatalf("file reached %d bytes under a cap of %d", biggest, capBytes)
	}
	if rotated < 3 {
		t.Fatalf("only %d rotations: the writer wrote too little to test anything", rotated)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		t.Fatalf("NUL at %d of %d: the writer wrote past a hole", i, len(b))
	}
	kept, err := os.ReadFile(log + ".1")
	if err != nil || len(kept) == 0 || len(kept) > capBytes/2 || bytes.IndexByte(kept, 0) >= 0 {
		t.Fatalf(".1 has %d bytes (%v), want 1..%d without NULs", len(kept), err, capBytes/2)
	}
}
