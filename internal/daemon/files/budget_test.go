package files

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/testenv"
)

// craftedTar is a tar of n empty files followed by one file claiming size
// bytes.
func craftedTar(t *testing.T, n int, size int64) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for i := 0; i < n; i++ {
		if err := tw.WriteHeader(&tar.Header{Name: "f" + strings.Repeat("x", i%50), Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
	}
	if size > 0 {
		tw.WriteHeader(&tar.Header{Name: "big", Mode: 0o644, Size: size, Typeflag: tar.TypeReg})
		tw.Write(make([]byte, size))
	}
	tw.Close()
	return b.Bytes()
}

func TestTarBudget(t *testing.T) {
	for _, tt := range []struct {
		name    string
		stream  []byte
		budget  Budget
		wantErr string
	}{
		{"within", craftedTar(t, 10, 5000), Budget{MaxBytes: 1 << 20, MaxEntries: 11}, ""},
		{"entries", craftedTar(t, 100, 0), Budget{MaxBytes: 1 << 20, MaxEntries: 50}, "max_copy_out_entries"},
		{"bytes", craftedTar(t, 1, 100000), Budget{MaxBytes: 50000, MaxEntries: 10}, "max_copy_out"},
		{"not a tar", bytes.Repeat([]byte("garbage!"), 200), Budget{}, "malformed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			cancelled := false
			tb := newTarBudget(&out, tt.budget, "archive /x", func() { cancelled = true })
			_, werr := io.Copy(tb, bytes.NewReader(tt.stream))
			err := tb.Close()
			if tt.wantErr == "" {
				if werr != nil || err != nil || !bytes.Equal(out.Bytes(), tt.stream) {
					t.Fatalf("within budget: %v, %v, %d of %d bytes", werr, err, out.Len(), len(tt.stream))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || werr == nil || !cancelled {
				t.Fatalf("over budget: close %v, write %v, cancelled %v; want %q", err, werr, cancelled, tt.wantErr)
			}
			if tt.budget.MaxBytes > 0 && int64(out.Len()) > tt.budget.MaxBytes {
				t.Fatalf("passed %d bytes, over %d", out.Len(), tt.budget.MaxBytes)
			}
		})
	}
}

// endless is a tar header claiming a huge file and then zeros for ever.
type endless struct{ head []byte }

func (e *endless) Read(p []byte) (int, error) {
	if len(e.head) > 0 {
		n := copy(p, e.head)
		e.head = e.head[n:]
		return n, nil
	}
	clear(p)
	return len(p), nil
}

func TestTarBudgetEndless(t *testing.T) {
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	tw.WriteHeader(&tar.Header{Name: "endless", Mode: 0o644, Size: 1 << 50, Typeflag: tar.TypeReg})
	tb := newTarBudget(io.Discard, Budget{MaxBytes: 8 << 20}, "archive /x", nil)
	_, err := io.Copy(tb, &endless{head: hdr.Bytes()})
	if !errors.Is(err, ErrOverBudget) || !errors.Is(tb.Close(), ErrOverBudget) {
		t.Fatalf("endless stream: %v", err)
	}
}

// TestReadBudget runs the real read scripts over a tree larger than the
// budget.
func TestReadBudget(t *testing.T) {
	sv, dir := newService(t)
	ctx := context.Background()
	src := filepath.Join(dir, "tree")
	os.MkdirAll(src, 0o755)
	for i := 0; i < 20; i++ {
		os.WriteFile(filepath.Join(src, "f"+strings.Repeat("a", i)), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "big"), make([]byte, 200000), 0o644)
	sv.Budget = Budget{MaxBytes: 100000, MaxEntries: 10}
	err := sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: filepath.Join(dir, "big")}, io.Discard)
	if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "max_copy_out") {
		t.Fatalf("read over budget: %v", err)
	}
	err = sv.ReadArchive(ctx, "vm", src, io.Discard)
	if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "max_copy_out_entries") {
		t.Fatalf("archive over budget: %v", err)
	}
	sv.Budget = Budget{MaxBytes: 1 << 20, MaxEntries: 100}
	if err := sv.ReadArchive(ctx, "vm", src, io.Discard); err != nil {
		t.Fatalf("archive within budget: %v", err)
	}
}

// TestWritesOverDataChannel writes a file and a tree through the data
// channel: a real banger-init recv on the host, dialed on 127.0.0.1.
func TestWritesOverDataChannel(t *testing.T) {
	sv, dir := newService(t)
	t.Setenv("BANGER_INIT", testenv.BuildInit(t, t.TempDir()))
	dials := 0
	sv.DialData = func(ctx context.Context, _ model.VM, port int) (net.Conn, error) {
		dials++
		var d net.Dialer
		return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	}
	ctx := context.Background()
	body := bytes.Repeat([]byte("data channel "), 200000)
	if _, err := sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: filepath.Join(dir, "f")}, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || !bytes.Equal(b, body) {
		t.Fatalf("file over the data channel: %d bytes, %v", len(b), err)
	}
	if _, err := sv.WriteArchive(ctx, "vm", filepath.Join(dir, "tree"), bytes.NewReader(craftedTar(t, 3, 70000))); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "tree", "big")); err != nil || st.Size() != 70000 {
		t.Fatalf("tree over the data channel: %v, %v", st, err)
	}
	if dials != 2 {
		t.Fatalf("%d data channel dials, want 2", dials)
	}
	// A body that breaks mid-stream commits nothing.
	broken := io.MultiReader(bytes.NewReader(body[:100000]), iotest.ErrReader(errors.New("client went away")))
	_, err := sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: filepath.Join(dir, "g")}, broken)
	if err == nil {
		t.Fatal("a broken body was written")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*g*")); len(left) != 0 {
		t.Fatalf("a broken write left %v", left)
	}
	// The configuration can keep writes on SSH.
	sv.Transport = func() string { return TransportSSH }
	before := dials
	if _, err := sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: filepath.Join(dir, "h")}, bytes.NewReader(body)); err != nil || dials != before {
		t.Fatalf("write over SSH: %v, %d dials", err, dials)
	}
}
