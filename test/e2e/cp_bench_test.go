package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/testenv"
)

func requireBench(t *testing.T) {
	t.Helper()
	if os.Getenv("BANGER_BENCH") != "1" {
		t.Skip("set BANGER_BENCH=1 (with BANGER_E2E=1) to run this bench")
	}
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// TestVMCpBench compares `vm cp -r` of 200 MiB (50 incompressible 4 MiB
// files) into a guest and back out with `tar -c | banger vm ssh -- tar -x`
// (the daemon's key and pooled path) and its reverse, on the same bytes,
// in the same run, and reports the time ratios (goal: at most 1.0).
func TestVMCpBench(t *testing.T) {
	requireBench(t)
	h := NewHarness(t)
	h.StartVM("bench", "--disk", "4G")
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(src, 0o755)
	const files, each = 50, 4 << 20
	for i := 0; i < files; i++ {
		f, err := os.Create(filepath.Join(src, fmt.Sprintf("f%02d.bin", i)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(f, rand.Reader, each); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	sum := fileSum(t, filepath.Join(src, "f07.bin"))
	banger := filepath.Join(binDir, "banger")
	sh := func(script string) {
		cmd := exec.Command("sh", "-c", script)
		cmd.Env = append(h.env, "BANGER="+banger)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
	}
	baseIn := timed(func() {
		sh(`tar -C ` + src + ` -cf - . | "$BANGER" vm ssh bench -- 'mkdir -p /root/base && tar -xf - -C /root/base'`)
	})
	cpIn := timed(func() { h.MustRun("vm", "cp", "-r", src, "bench:/root/cp") })
	if out := h.MustRun("vm", "exec", "bench", "--", "sha256sum", "/root/cp/f07.bin"); len(out) < 64 || out[:64] != sum {
		t.Fatalf("f07.bin in the guest: %q, want %s", out, sum)
	}
	outBase, outCp := filepath.Join(t.TempDir(), "base"), filepath.Join(t.TempDir(), "cp")
	os.MkdirAll(outBase, 0o755)
	baseOut := timed(func() {
		sh(`"$BANGER" vm ssh bench -- tar -C /root/base -cf - . | tar -xf - -C ` + outBase)
	})
	cpOut := timed(func() { h.MustRun("vm", "cp", "-r", "bench:/root/cp", outCp) })
	if got := fileSum(t, filepath.Join(outCp, "f07.bin")); got != sum {
		t.Fatalf("f07.bin back: %s, want %s", got, sum)
	}
	mb := float64(files*each) / (1 << 20)
	t.Logf("in:  tar|ssh %.1fs (%.1f MB/s), vm cp %.1fs (%.1f MB/s): ratio %.2f (goal <= 1.0)",
		baseIn.Seconds(), mb/baseIn.Seconds(), cpIn.Seconds(), mb/cpIn.Seconds(), cpIn.Seconds()/baseIn.Seconds())
	t.Logf("out: ssh tar|tar %.1fs (%.1f MB/s), vm cp %.1fs (%.1f MB/s): ratio %.2f",
		baseOut.Seconds(), mb/baseOut.Seconds(), cpOut.Seconds(), mb/cpOut.Seconds(), cpOut.Seconds()/baseOut.Seconds())
}

// benchServer serves, on 0.0.0.0:9000 in the guest, 64 MiB to a client
// that sends "d", and one byte back to one that sends "p".
const benchServer = `
import socket, threading
blk = b"\0" * (1 << 20)
def serve(c):
    try:
        op = c.recv(1)
        if op == b"d":
            for _ in range(64):
                c.sendall(blk)
        elif op == b"p":
            c.sendall(b"p")
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
`

// TestPortForwardBench compares a published port (`vm port add`, host
// 127.0.0.1) with a direct TCP connection to the guest's address from
// inside the test's network namespace, on the same guest server in the
// same run: download throughput (64 MiB, best of 3) and connect latency
// (connect, one byte each way, close; median of 20). Goal: throughput
// ratio at least 0.8.
func TestPortForwardBench(t *testing.T) {
	requireBench(t)
	h := NewHarness(t)
	vm := h.StartVM("bench")
	h.MustRun("vm", "exec", "bench", "--", "sh", "-c", "cat > /root/srv.py <<'EOF'\n"+benchServer+"EOF\n")
	h.MustRun("session", "start", "bench", "--name", "srv", "--require", "python3", "--", "python3", "/root/srv.py")
	var f model.Forward
	if err := json.Unmarshal([]byte(h.MustRun("--json", "vm", "port", "add", "bench", "0:9000")), &f); err != nil || f.HostPort == 0 {
		t.Fatalf("port add: %+v, %v", f, err)
	}
	fwd := func() (net.Conn, error) {
		return net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(f.HostPort), 10*time.Second)
	}
	direct := func() (net.Conn, error) {
		return testenv.DialInNetns(h.Netns, "tcp", net.JoinHostPort(vm.GuestIP, "9000"), 10*time.Second)
	}
	exchange := func(dial func() (net.Conn, error), op string) (int64, error) {
		c, err := dial()
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		if _, err := c.Write([]byte(op)); err != nil {
			return 0, err
		}
		return io.Copy(io.Discard, c)
	}
	// The server may still be starting.
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, err := exchange(direct, "p")
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest server: %d bytes, %v", n, err)
		}
		time.Sleep(time.Second)
	}
	throughput := func(name string, dial func() (net.Conn, error)) float64 {
		best := 0.0
		for i := 0; i < 3; i++ {
			var n int64
			var err error
			d := timed(func() { n, err = exchange(dial, "d") })
			if err != nil || n != 64<<20 {
				t.Fatalf("%s download: %d bytes, %v", name, n, err)
			}
			best = max(best, 64/d.Seconds())
		}
		return best
	}
	latency := func(name string, dial func() (net.Conn, error)) time.Duration {
		var ds []time.Duration
		for i := 0; i < 20; i++ {
			var n int64
			var err error
			ds = append(ds, timed(func() { n, err = exchange(dial, "p") }))
			if err != nil || n != 1 {
				t.Fatalf("%s ping: %d bytes, %v", name, n, err)
			}
		}
		return median(ds)
	}
	dT, fT := throughput("direct", direct), throughput("forward", fwd)
	dL, fL := latency("direct", direct), latency("forward", fwd)
	t.Logf("throughput: direct %.1f MB/s, forwarded %.1f MB/s: ratio %.2f (goal >= 0.8)", dT, fT, fT/dT)
	t.Logf("connect+1 byte each way: direct %v, forwarded %v: ratio %.2f", dL.Round(time.Microsecond), fL.Round(time.Microsecond), fL.Seconds()/dL.Seconds())
}
