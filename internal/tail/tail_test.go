package tail

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestLines(t *testing.T) {
	cases := []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 0, "a\nb\nc\n"},
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\nc\n", 5, "a\nb\nc\n"},
		{"", 3, ""},
		{"\n\n", 1, "\n"},
		{"only", 1, "only"},
		{"a\nb\nc\n", -1, "a\nb\nc\n"},
	}
	for _, c := range cases {
		if got := string(Lines([]byte(c.in), c.n)); got != c.want {
			t.Errorf("Lines(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func TestBuffer(t *testing.T) {
	b := Buffer{Max: 4}
	for _, s := range []string{"ab", "cd", "efg"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := string(b.Bytes()); got != "defg" {
		t.Errorf("Bytes = %q, want defg", got)
	}
	if _, _ = b.Write([]byte("0123456789")); b.String() != "6789" {
		t.Errorf("after a long write: %q", b.String())
	}

	// A cut inside a UTF-8 sequence: Bytes keeps it, String replaces it.
	u := Buffer{Max: 3}
	_, _ = u.Write([]byte("éé")) // c3 a9 c3 a9: keeps a9 c3 a9
	if got := string(u.Bytes()); got != "\xa9é" {
		t.Errorf("Bytes = %q", got)
	}
	if got := u.String(); got != "?é" {
		t.Errorf("String = %q, want ?é", got)
	}

	var none Buffer
	_, _ = none.Write([]byte("x"))
	if none.String() != "" {
		t.Errorf("Max 0 kept %q", none.String())
	}
}

func TestFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		content  string
		maxBytes int64
		n        int
		want     string
	}{
		{"a\nb\nc\n", 1 << 10, 2, "b\nc"},
		{"a\nb\nc\n\n\n", 1 << 10, 2, "b\nc"}, // trailing newlines are dropped first
		{"a\nb\nc", 1 << 10, 5, "a\nb\nc"},
		{"a\nb\nc\n", 1 << 10, 0, "a\nb\nc"},
		{"", 1 << 10, 3, ""},
		{"\n\n", 1 << 10, 3, ""},
		{"first line\nsecond\n", 9, 5, "e\nsecond"}, // only the window is read
		{"abc", 0, 1, ""},
	}
	for i, c := range cases {
		p := write("f"+string(rune('0'+i)), c.content)
		got, err := File(p, c.maxBytes, c.n)
		if err != nil || got != c.want {
			t.Errorf("File(%q, %d, %d) = %q, %v; want %q", c.content, c.maxBytes, c.n, got, err, c.want)
		}
	}
	if _, err := File(filepath.Join(dir, "missing"), 10, 1); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}

// TestFileSparse reads the end of a 1 GiB sparse file: File must seek, not
// read (or allocate) the whole file.
func TestFileSparse(t *testing.T) {
	p := filepath.Join(t.TempDir(), "huge")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 30
	const last = "the end\n"
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	end := "\nbefore\n" + last
	if _, err := f.WriteAt([]byte(end), size-int64(len(end))); err != nil {
		t.Fatal(err)
	}
	f.Close()

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	got, err := File(p, 4<<10, 2)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if got != "before\nthe end" {
		t.Errorf("File = %.200q", got)
	}
	if elapsed > 2*time.Second {
		t.Errorf("File took %v on a sparse 1 GiB file", elapsed)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("File allocated %d bytes for a 4 KiB window", alloc)
	}

	// All lines of the window: no more than the window comes back.
	got, err = File(p, 4<<10, 0)
	if err != nil || len(got) > 4<<10 || !strings.HasSuffix(got, "before\nthe end") {
		t.Errorf("File(all lines) = %d bytes, %v", len(got), err)
	}
}

func TestEnd(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(p, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, off, err := End(p, 4)
	if err != nil || string(b) != "6789" || off != 10 {
		t.Fatalf("End(4) = %q, %d, %v; want \"6789\", 10", b, off, err)
	}
	if b, off, err = End(p, 100); err != nil || string(b) != "0123456789" || off != 10 {
		t.Fatalf("End(100) = %q, %d, %v", b, off, err)
	}
	if _, _, err := End(filepath.Join(t.TempDir(), "none"), 4); !os.IsNotExist(err) {
		t.Fatalf("End of a missing file: %v", err)
	}
}
