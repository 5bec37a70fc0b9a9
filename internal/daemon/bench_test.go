package daemon

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
)

// BenchmarkCreateFlatness measures the daemon-side `vm create` (record,
// qcow2 system disk, work disk) over a 1 GiB and a 20 GiB image in the same
// run and reports their ratio: copy-on-write creation must not depend on the
// image size.
func BenchmarkCreateFlatness(b *testing.B) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		b.Skip("mkfs.ext4 not installed (apt-get install e2fsprogs)")
	}
	f := newFixture(b)
	f.d.host.strategies = []storage.Strategy{storage.Qcow2{}}
	f.d.wire()
	ctx := context.Background()
	sizes := []int64{1 << 30, 20 << 30}
	per := map[int64]time.Duration{}
	for _, size := range sizes {
		p := filepath.Join(f.cfg.ImagesDir(), fmt.Sprintf("img-%d.ext4", size))
		if err := exec.Command("truncate", "-s", fmt.Sprint(size), p).Run(); err != nil {
			b.Fatal(err)
		}
		if err := exec.Command("mkfs.ext4", "-q", "-F", p).Run(); err != nil {
			b.Fatal(err)
		}
		name := fmt.Sprintf("img%dg", size>>30)
		if err := f.st.CreateImage(ctx, model.Image{ID: model.NewID(), Name: name, Path: p, HostKey: "x", CreatedAt: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, size := range sizes {
			// Interleaved so drift on a busy host hits both alike.
			for j := 0; j < 5; j++ {
				start := time.Now()
				vm, err := f.d.CreateVM(ctx, api.CreateVMRequest{Image: fmt.Sprintf("img%dg", size>>30), Disk: "4G"}, nil)
				per[size] += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := f.d.DeleteVM(ctx, vm.ID, false); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		}
	}
	n := float64(b.N * 5)
	small := float64(per[sizes[0]].Microseconds()) / n
	large := float64(per[sizes[1]].Microseconds()) / n
	b.ReportMetric(small/1000, "ms/create-1GiB")
	b.ReportMetric(large/1000, "ms/create-20GiB")
	b.ReportMetric(large/small, "ratio-20GiB/1GiB")
}
