package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/testenv"
)

// TestBuildReal builds a small image from the host's Debian mirror, checks
// it with Inspect, and checks a second build is a cache hit. It needs root
// and mmdebstrap, so it runs only with BANGER_E2E=1.
func TestBuildReal(t *testing.T) {
	testenv.RequireE2E(t)
	testenv.RequireRoot(t)
	dir := t.TempDir()
	initBin := testenv.BuildInit(t, dir)
	copySrc := filepath.Join(dir, "hello.txt")
	os.WriteFile(copySrc, []byte("hello from the host\n"), 0o644)
	opts := BuildOptions{
		InitBinary: initBin, CacheDir: filepath.Join(dir, "cache"), SizeBytes: 1 << 30,
		Copies:  []Copy{{Src: copySrc, Dst: "/etc/banger-hello"}},
		Scripts: []Script{{Name: "mark", Content: []byte("echo built > /etc/banger-mark\n")}},
	}
	var lines int
	start := time.Now()
	res, err := Build(context.Background(), opts, filepath.Join(dir, "a.ext4"), func(p progress.Event) {
		lines++
		if p.Phase != "mmdebstrap" || lines%50 == 0 {
			t.Logf("%5.1fs %s: %s", p.Elapsed, p.Phase, p.Message)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cold build %s: %+v", time.Since(start), res)
	rep, err := Inspect(res.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Ext4 || !rep.HasSSHD || !rep.HasBangerInit || !rep.HasBash || rep.HostKey != res.HostKey || len(rep.Missing) != 0 {
		t.Fatalf("inspect: %+v (host key at build: %s)", rep, res.HostKey)
	}
	for file, want := range map[string]string{"/etc/banger-hello": "hello from the host", "/etc/banger-mark": "built"} {
		out, _ := exec.Command("debugfs", "-R", "cat "+file, res.Path).Output()
		if !strings.Contains(string(out), want) {
			t.Errorf("%s = %q, want %q", file, out, want)
		}
	}
	start = time.Now()
	again, err := Build(context.Background(), opts, filepath.Join(dir, "b.ext4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.Checksum != res.Checksum || again.HostKey != res.HostKey || time.Since(start) > 5*time.Second {
		t.Fatalf("second build not a fast cache hit (%s): %+v", time.Since(start), again)
	}
	t.Logf("cached build %s", time.Since(start))
}
