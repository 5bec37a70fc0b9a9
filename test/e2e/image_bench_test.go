package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/image"
	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/testenv/artifacts"
)

// BenchmarkImageBuild times a cold build of the default image (no cache)
// against the same build answered by the recipe cache, and reports the
// ratio.
func BenchmarkImageBuild(b *testing.B) {
	testenv.RequireE2E(b)
	testenv.RequireRoot(b)
	testenv.RequireBinary(b, "mmdebstrap")
	dir := b.TempDir()
	bin := testenv.BuildInit(b, dir)
	opts := image.BuildOptions{Name: "bench", Init: image.InitFast, InitBinary: bin, CacheDir: testenv.CacheDir()}
	var cold, cached time.Duration
	for i := 0; i < b.N; i++ {
		o := opts
		o.NoCache = true
		start := time.Now()
		if _, err := image.Build(context.Background(), o, filepath.Join(dir, "cold.ext4"), nil); err != nil {
			b.Fatal(err)
		}
		cold += time.Since(start)
		start = time.Now()
		res, err := image.Build(context.Background(), opts, filepath.Join(dir, "cached.ext4"), nil)
		if err != nil {
			b.Fatal(err)
		}
		cached += time.Since(start)
		if !res.Cached {
			b.Fatal("second build missed the cache")
		}
		os.Remove(filepath.Join(dir, "cold.ext4"))
		os.Remove(filepath.Join(dir, "cached.ext4"))
	}
	n := float64(b.N)
	b.ReportMetric(cold.Seconds()/n, "s/build-cold")
	b.ReportMetric(cached.Seconds()/n, "s/build-cached")
	b.ReportMetric(cached.Seconds()/cold.Seconds(), "ratio-cached/cold")
}

// BenchmarkBootToSSH times boot→first SSH command of the fast init and the
// systemd init images (same kernel, plain QEMU/TCG), and reports systemd's
// time over fast's.
func BenchmarkBootToSSH(b *testing.B) {
	testenv.RequireE2E(b)
	testenv.RequireRoot(b)
	kern := artifacts.Kernel(b)
	imgs := map[string]image.Result{image.InitFast: artifacts.Image(b, image.InitFast), image.InitSystemd: artifacts.Image(b, image.InitSystemd)}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		b.Fatal(err)
	}
	authorized := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	took := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, init := range []string{image.InitFast, image.InitSystemd} {
			for j := 0; j < 3; j++ {
				b.StopTimer()
				ns := testenv.Netns(b) // BootQEMU makes a bridge and tap of fixed names
				b.StartTimer()
				q := artifacts.BootQEMU(b, ns, artifacts.QEMUOptions{Image: imgs[init], Kernel: kern, AuthorizedKey: authorized})
				c, err := q.DialSSH(signer, imgs[init].HostKey, 3*time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := testenv.Run(c, "true"); err != nil {
					b.Fatal(err)
				}
				took[init] = append(took[init], time.Since(q.Started))
				c.Close()
				b.StopTimer()
				_ = q.Powerdown()
				if !q.WaitExit(60 * time.Second) {
					b.Fatalf("%s guest did not power off", init)
				}
				b.StartTimer()
			}
		}
	}
	fast, sysd := median(took[image.InitFast]), median(took[image.InitSystemd])
	b.ReportMetric(fast.Seconds(), "s/boot-ssh-fast")
	b.ReportMetric(sysd.Seconds(), "s/boot-ssh-systemd")
	b.ReportMetric(sysd.Seconds()/fast.Seconds(), "ratio-systemd/fast")
}
