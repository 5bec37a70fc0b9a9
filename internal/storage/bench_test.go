package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkCreate measures a qcow2 system disk over a 1 GiB and a 20 GiB
// sparse image: the two must cost the same. The overlay is written in Go
// and synced; BenchmarkQcow2Overlay is the part without I/O.
func BenchmarkCreate(b *testing.B) {
	ctx := context.Background()
	for _, size := range []int64{1 << 30, 20 << 30} {
		b.Run(fmt.Sprintf("qcow2/%dGiB", size>>30), func(b *testing.B) {
			dir := b.TempDir()
			image := filepath.Join(dir, "base.ext4")
			sparseImage(b, image, size)
			vmDir := filepath.Join(dir, "vm")
			os.Mkdir(vmDir, 0o700)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := (Qcow2{}).Create(ctx, image, vmDir); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkQcow2Overlay measures laying out an overlay's bytes alone.
func BenchmarkQcow2Overlay(b *testing.B) {
	for _, size := range []int64{1 << 30, 20 << 30} {
		b.Run(fmt.Sprintf("%dGiB", size>>30), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := Qcow2Overlay("/var/lib/banger/images/base.ext4", size); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCreateWorkDisk measures a formatted work disk of 4 GiB and 20
// GiB.
func BenchmarkCreateWorkDisk(b *testing.B) {
	need(b, "mkfs.ext4")
	ctx := context.Background()
	for _, size := range []int64{4 << 30, 20 << 30} {
		b.Run(fmt.Sprintf("%dGiB", size>>30), func(b *testing.B) {
			dir := b.TempDir()
			for i := 0; i < b.N; i++ {
				disk := filepath.Join(dir, fmt.Sprintf("work-%d.ext4", i))
				if err := CreateWorkDisk(ctx, disk, size); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.Remove(disk)
				b.StartTimer()
			}
		})
	}
}
