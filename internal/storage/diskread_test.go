package storage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseDebugfsStat(t *testing.T) {
	head := "Inode: 12   Type: regular    Mode:  4755   Flags: 0x80000\n" +
		"Generation: 0    Version: 0x00000000:00000000\n" +
		"User:     0   Group:     0   Project:     0   Size: 3\n" +
		"File ACL: 0\n" +
		" ctime: 0x6b0d2bbb:00000000 -- Mon Nov 30 07:54:35 2026\n" +
		" mtime: 0x65937d25:1d6f3454 -- Tue Jan  2 03:04:05 2024\n"
	e, err := ParseDebugfsStat(head)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Unix(0x65937d25, 0x1d6f3454>>2).UTC()
	if e.ino != 12 || e.Type != DiskRegular || e.Mode != 0o4755 || e.Size != 3 || !e.MTime.Equal(want) {
		t.Fatalf("ParseDebugfsStat = %+v, want ino 12 regular 4755 size 3 mtime %v", e, want)
	}
	// A small inode has no extra field; epoch bits extend past 2038.
	e, err = ParseDebugfsStat(strings.Replace(head, "0x65937d25:1d6f3454", "0x00000001:00000001", 1))
	if err != nil || e.MTime.Unix() != 1+1<<32 {
		t.Fatalf("epoch bits: %v %v", e.MTime.Unix(), err)
	}
	for _, bad := range []string{"", "Inode: x Type: regular Mode: 0644 ", strings.Replace(head, "Size: 3", "Size: -3", 1), strings.Replace(head, " mtime:", " xtime:", 1), strings.Replace(head, "4755", "77777", 1)} {
		if _, err := ParseDebugfsStat(bad); err == nil {
			t.Errorf("ParseDebugfsStat(%.40q) accepted it", bad)
		}
	}
}

// treeDisk makes an ext4 image from a tree with an executable, a symlink,
// a long symlink, a symlinked directory and a set mtime.
func treeDisk(t *testing.T) string {
	t.Helper()
	need(t, "mkfs.ext4", "debugfs")
	if os.Geteuid() != 0 {
		t.Skip("needs root (jails, loop devices)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "tree/sub"), 0o750))
	must(os.WriteFile(filepath.Join(src, "tree/run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(src, "tree/sub/data"), bytes.Repeat([]byte("0123456789"), 10000), 0o640))
	must(os.Symlink("run.sh", filepath.Join(src, "tree/link")))
	must(os.Symlink(strings.Repeat("x", 100), filepath.Join(src, "tree/long")))
	must(os.Symlink("/etc", filepath.Join(src, "etc")))
	mt := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(src, "tree/run.sh"), mt, mt))
	disk := filepath.Join(dir, "disk.ext4")
	sparseImage(t, disk, 32<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, disk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v: %s", err, out)
	}
	return disk
}

func TestDiskReads(t *testing.T) {
	disk := treeDisk(t)
	ctx := context.Background()
	e, err := StatDisk(ctx, disk, "/tree/run.sh")
	if err != nil || e.Type != DiskRegular || e.Mode != 0o755 || e.Size != 18 || e.MTime.Year() != 2024 {
		t.Fatalf("StatDisk run.sh = %+v, %v", e, err)
	}
	if e, err := StatDisk(ctx, disk, "/tree/long"); err != nil || e.Type != DiskSymlink || e.Target != strings.Repeat("x", 100) {
		t.Fatalf("StatDisk long = %+v, %v", e, err)
	}
	if _, err := StatDisk(ctx, disk, "/nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("StatDisk /nope: %v", err)
	}
	if _, err := StatDisk(ctx, disk, "/etc/passwd"); !errors.Is(err, ErrThroughSymlink) {
		t.Fatalf("StatDisk through a symlink: %v", err)
	}
	ents, err := ListDisk(ctx, disk, "/tree", 5, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Path+":"+e.Type+":"+e.Target)
	}
	want := "link:symlink:run.sh long:symlink:" + strings.Repeat("x", 100) + " run.sh:regular: sub:directory: sub/data:regular:"
	if strings.Join(got, " ") != want {
		t.Fatalf("ListDisk = %v\nwant %v", got, want)
	}
	if ents, err := ListDisk(ctx, disk, "/tree", 1, 100); err != nil || len(ents) != 4 {
		t.Fatalf("ListDisk depth 1 = %d entries, %v", len(ents), err)
	}
	if _, err := ListDisk(ctx, disk, "/tree", 5, 3); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ListDisk over max: %v", err)
	}
	var b bytes.Buffer
	if err := StreamDiskFile(ctx, disk, "/tree/sub/data", 5, 12, &b); err != nil || b.String() != "567890123456" {
		t.Fatalf("StreamDiskFile range = %q, %v", b.String(), err)
	}
	b.Reset()
	if err := StreamDiskFile(ctx, disk, "/tree/sub/data", 0, 0, &b); err != nil || b.Len() != 100000 {
		t.Fatalf("StreamDiskFile whole = %d bytes, %v", b.Len(), err)
	}
	if err := StreamDiskFile(ctx, disk, "/tree", 0, 0, io.Discard); err == nil {
		t.Fatal("StreamDiskFile of a directory worked")
	}
	b.Reset()
	if err := ArchiveDisk(ctx, disk, "/tree", "", CopyLimits{}, &b); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&b)
	got = nil
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, h.Name+":"+string(h.Typeflag)+":"+h.Linkname)
		if h.Name == "./run.sh" && (h.Mode&0o777 != 0o755 || h.ModTime.Year() != 2024) {
			t.Errorf("run.sh: mode %o mtime %v", h.Mode, h.ModTime)
		}
	}
	want = "./link:2:run.sh ./long:2:" + strings.Repeat("x", 100) + " ./run.sh:0: ./sub/:5: ./sub/data:0:"
	if strings.Join(got, " ") != want {
		t.Fatalf("ArchiveDisk = %v\nwant %v", got, want)
	}
	if err := ArchiveDisk(ctx, disk, "/etc/x", "", CopyLimits{}, io.Discard); !errors.Is(err, ErrThroughSymlink) {
		t.Fatalf("ArchiveDisk through a symlink: %v", err)
	}
	if err := ArchiveDisk(ctx, disk, "/tree", "", CopyLimits{MaxBytes: 1000}, io.Discard); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ArchiveDisk over its budget: %v", err)
	}
	b.Reset()
	if err := ArchiveDisk(ctx, disk, "/", "", CopyLimits{}, &b); err != nil || !strings.Contains(b.String(), "tree/sub/data") {
		t.Fatalf("ArchiveDisk of the root: %v", err)
	}
}

// TestDiskReadsReplayJournal: a killed VM's work disk (copied while
// mounted) is read as it was last written, its journal replayed on a
// private copy; the disk itself is not written.
func TestDiskReadsReplayJournal(t *testing.T) {
	needRoot(t)
	need(t, "mkfs.ext4", "debugfs", "losetup", "e2fsck", "mount")
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "out"), 0o755)
	img := mkfsFrom(t, src)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount ext4 here: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(mnt, "out", "late.txt"), []byte("written while mounted\n"), 0o640)
	exec.Command("sync").Run()
	dirty := filepath.Join(t.TempDir(), "dirty.ext4")
	cp := exec.Command("cp", "--sparse=always", img, dirty).Run()
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	if cp != nil {
		t.Fatal(cp)
	}
	if ok, err := NeedsRecovery(dirty); err != nil || !ok {
		t.Skipf("the copy has no journal to replay (%v, %v)", ok, err)
	}
	before, _ := os.ReadFile(dirty)
	ctx := context.Background()
	if e, err := StatDisk(ctx, dirty, "/out/late.txt"); err != nil || e.Mode != 0o640 {
		t.Fatalf("StatDisk of a file in the journal: %+v, %v", e, err)
	}
	var b bytes.Buffer
	if err := StreamDiskFile(ctx, dirty, "/out/late.txt", 0, 0, &b); err != nil || b.String() != "written while mounted\n" {
		t.Fatalf("StreamDiskFile = %q, %v", b.String(), err)
	}
	if ents, err := ListDisk(ctx, dirty, "/out", 1, 10); err != nil || len(ents) != 1 {
		t.Fatalf("ListDisk = %v, %v", ents, err)
	}
	if after, _ := os.ReadFile(dirty); !bytes.Equal(before, after) {
		t.Error("the journal was replayed on the disk itself")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dirty), ".banger-replay-*")); len(left) != 0 {
		t.Errorf("the private copy was left: %v", left)
	}
}
