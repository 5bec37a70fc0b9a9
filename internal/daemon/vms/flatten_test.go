package vms

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/testenv"
)

// TestFlattenDeepSnapshots: with chain_depth 1, a snapshot of a VM made
// from a snapshot (two qcow2 files) is flattened in the background, the
// one found at start as the one taken after: its file reads the same
// through the image alone, its base is none, and the snapshot it was
// based on can go.
func TestFlattenDeepSnapshots(t *testing.T) {
	testenv.RequireBinary(t, "qemu-img", "qemu-io")
	f, _, _ := snapFixture(t)
	f.m.cfg.ChainDepth = 1
	ctx := context.Background()
	run := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(argv, " "), err, out)
		}
	}
	other := startVM(t, f, "other")
	im, err := f.m.store.GetImage(ctx, other.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(im.Path, bytes.Repeat([]byte{0x11}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// What a snapshot captures is the record's file (the fake strategy
	// keeps its disk elsewhere), written here as QEMU would.
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", im.Path, "-F", "raw", other.SystemDisk)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 64k 64k", other.SystemDisk)
	theirs, err := f.m.CreateSnapshot(ctx, "other", "theirs")
	if err != nil {
		t.Fatal(err)
	}
	dev := startVM(t, f, "dev")
	if err := f.m.store.AddSnapshotUser(ctx, theirs.ID, dev.ID); err != nil {
		t.Fatal(err)
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(theirs.Dir, "system.qcow2"), "-F", "qcow2", dev.SystemDisk)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 128k 64k", dev.SystemDisk)
	whole := filepath.Join(t.TempDir(), "whole.raw")
	run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", dev.SystemDisk, whole)

	mine, err := f.m.CreateSnapshot(ctx, "dev", "mine")
	if err != nil {
		t.Fatal(err)
	}
	if mine.BaseID != theirs.ID {
		t.Fatalf("mine's base = %q", mine.BaseID)
	}
	// Not flattening yet: mine waits for the start.
	if got, _ := f.m.store.GetSnapshot(ctx, "mine"); got.BaseID != theirs.ID {
		t.Fatalf("flattened before the start: base %q", got.BaseID)
	}
	// A daemon that stopped while flattening left its scratch file.
	scratch := filepath.Join(theirs.Dir, "system.qcow2.flat") // theirs is not deep
	if err := os.WriteFile(scratch, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.m.StartFlatten(ctx)
	f.m.StopFlatten()
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Errorf("scratch file left: %v", err)
	}
	mine2, err := f.m.CreateSnapshot(ctx, "dev", "mine2")
	if err != nil {
		t.Fatal(err)
	}
	f.m.StopFlatten()
	for _, sn := range []model.Snapshot{mine, mine2} {
		got, err := f.m.store.GetSnapshot(ctx, sn.ID)
		if err != nil || got.BaseID != "" {
			t.Fatalf("%s after flattening: base %q, %v", sn.Name, got.BaseID, err)
		}
		file := filepath.Join(sn.Dir, "system.qcow2")
		if b, err := storage.Qcow2Backing(file); err != nil || b != im.Path {
			t.Fatalf("%s's backing file = %q, %v; want the image", sn.Name, b, err)
		}
		run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", file, whole)
	}
	if got, _ := f.m.store.GetSnapshot(ctx, "theirs"); got.BaseID != "" {
		t.Fatalf("theirs (depth 1) changed: base %q", got.BaseID)
	}
	if err := f.m.Delete(ctx, "dev", true); err != nil {
		t.Fatal(err)
	}
	if err := f.m.RemoveSnapshot(ctx, "theirs"); err != nil {
		t.Fatalf("remove the former base of flattened snapshots: %v", err)
	}
	for _, sn := range []model.Snapshot{mine, mine2} {
		run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", filepath.Join(sn.Dir, "system.qcow2"), whole)
	}
	// A VM made from a flattened snapshot starts: its chain is its
	// overlay, the snapshot's file and the image.
	if _, err := f.m.Stop(ctx, "other", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := f.m.store.AddSnapshotUser(ctx, mine.ID, other.ID); err != nil {
		t.Fatal(err)
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(mine.Dir, "system.qcow2"), "-F", "qcow2", filepath.Join(other.Dir, "system.fake"))
	if _, err := f.m.Start(ctx, "other", nil); err != nil {
		t.Fatalf("start over a flattened snapshot: %v", err)
	}
}

// TestFlattenRefusesForeignChain: a deep snapshot whose file names a
// file outside its lineage is not flattened (qemu-img would read it):
// it stays as it was, with its base.
func TestFlattenRefusesForeignChain(t *testing.T) {
	f, _, _ := snapFixture(t)
	f.m.cfg.ChainDepth = 1
	ctx := context.Background()
	sn := model.Snapshot{ID: model.NewID(), Name: "deep", VMID: "gone", ImageID: "x", CowStrategy: "qcow2", State: model.SnapshotReady,
		BaseID: "base1"}
	base := sn
	base.ID, base.Name, base.BaseID = "base1", "base", ""
	im, err := f.m.store.GetImage(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*model.Snapshot{&base, &sn} {
		s.ImageID = im.ID
		s.Dir = filepath.Join(f.m.SnapshotsDir(), s.ID)
		if err := os.MkdirAll(s.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := f.m.store.CreateSnapshot(ctx, *s); err != nil {
			t.Fatal(err)
		}
	}
	img, err := filepath.Abs(im.Path)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(sn.Dir, "system.qcow2")
	for _, c := range []struct {
		backing string
		size    int64
		want    string
	}{
		{"/dev/sda", 512, `backing file "/dev/sda" is not the vm's image`},
		// qemu-img rebase would walk a petabyte.
		{img, 1 << 50, "virtual size of 1125899906842624 bytes exceeds"},
	} {
		hostile, err := storage.Qcow2Overlay(c.backing, c.size)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, hostile, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := f.m.flatten(ctx, sn.ID); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("flatten of a header over %s of %d bytes: %v; want %q", c.backing, c.size, err, c.want)
		}
		if got, _ := f.m.store.GetSnapshot(ctx, sn.ID); got.BaseID != "base1" {
			t.Fatalf("base after a refused flatten = %q", got.BaseID)
		}
		if b, err := os.ReadFile(file); err != nil || !bytes.Equal(b, hostile) {
			t.Fatalf("a refused flatten touched the file: %v", err)
		}
		if ents, _ := os.ReadDir(sn.Dir); len(ents) != 1 {
			t.Fatalf("files left: %v", ents)
		}
	}
}

func TestChainDepth(t *testing.T) {
	all := []model.Snapshot{
		{ID: "a"}, {ID: "b", BaseID: "a"}, {ID: "c", BaseID: "b"},
		{ID: "old", BaseID: model.SnapshotBaseUnknown}, {ID: "d", BaseID: "old"},
		{ID: "e", BaseID: "missing"},
		{ID: "l1", BaseID: "l2"}, {ID: "l2", BaseID: "l1"},
	}
	for _, c := range []struct {
		id    string
		depth int
		ok    bool
	}{
		{"a", 1, true}, {"b", 2, true}, {"c", 3, true},
		{"old", 2, false}, {"d", 3, false}, {"e", 2, false}, {"l1", storage.MaxQcow2Chain + 1, false},
	} {
		var sn model.Snapshot
		for _, s := range all {
			if s.ID == c.id {
				sn = s
			}
		}
		if depth, ok := chainDepth(sn, all); ok != c.ok || (ok && depth != c.depth) {
			t.Errorf("chainDepth(%s) = %d, %v; want %d, %v", c.id, depth, ok, c.depth, c.ok)
		}
	}
}
