package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/testenv/artifacts"
)

// BenchmarkVMRunVsBareQEMU compares `banger vm run --rm -- true` (create,
// boot, SSH, run, delete) with the floor under it: a bare QEMU boot of the
// same kernel and image to a first `ssh true`, measured in the same run. It
// reports the ratio of the medians.
func BenchmarkVMRunVsBareQEMU(b *testing.B) {
	h := NewHarness(b)
	h.MustRun("vm", "run", "--rm", "--", "true") // the default image and kernel exist from here on
	im, k := artifacts.Artifacts(b)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		b.Fatal(err)
	}
	authorized := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	var bare, run []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 3; j++ {
			bareNs := testenv.Netns(b) // a bridge of its own, apart from the daemon's
			start := time.Now()
			q := artifacts.BootQEMU(b, bareNs, artifacts.QEMUOptions{Image: im, Kernel: k, AuthorizedKey: authorized})
			c, err := q.DialSSH(signer, im.HostKey, 2*time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := testenv.Run(c, "true"); err != nil {
				b.Fatal(err)
			}
			bare = append(bare, time.Since(start))
			c.Close()
			b.StopTimer()
			_ = q.Powerdown()
			q.WaitExit(30 * time.Second)
			b.StartTimer()

			start = time.Now()
			h.MustRun("vm", "run", "--rm", "--", "true")
			run = append(run, time.Since(start))
		}
	}
	mb, mr := median(bare), median(run)
	b.ReportMetric(mb.Seconds(), "s/bare-boot-ssh")
	b.ReportMetric(mr.Seconds(), "s/vm-run-true")
	b.ReportMetric(mr.Seconds()/mb.Seconds(), "ratio-vmrun/bare")
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
