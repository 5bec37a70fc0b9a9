package vms

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
)

// Snapshots with a fake driver: the files, the guest resumed and its
// clock set, a failed save leaving nothing, the refusals, a fork refused
// by a driver without a control channel, and removal.
func TestSnapshotWithFakes(t *testing.T) {
	f, snap, clocks := snapFixture(t)
	ctx := context.Background()
	vm := startVM(t, f, "dev")
	// The fake strategy keeps its disk elsewhere; the record's file is
	// what a snapshot captures.
	if err := os.WriteFile(vm.SystemDisk, []byte("overlay"), 0o600); err != nil {
		t.Fatal(err)
	}
	sn, err := f.m.CreateSnapshot(ctx, "dev", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if sn.State != model.SnapshotReady || sn.VMName != "dev" || sn.SizeBytes <= 0 || !strings.HasPrefix(sn.Dir, f.m.SnapshotsDir()) {
		t.Fatalf("snapshot = %+v", sn)
	}
	for _, p := range []string{"state/fake.state", "system.qcow2", "work.ext4"} {
		if _, err := os.Stat(filepath.Join(sn.Dir, p)); err != nil {
			t.Fatalf("snapshot file %s: %v", p, err)
		}
	}
	if len(snap.Paused) != 0 || *clocks != 1 {
		t.Fatalf("after a snapshot: paused %v, clock set %d times", snap.Paused, *clocks)
	}
	if got, _ := f.m.Get(ctx, "dev"); got.State != model.VMRunning || !f.m.Alive(got) {
		t.Fatalf("vm after a snapshot: %s", got.State)
	}

	snap.SaveErr = errors.New("disk full")
	if _, err := f.m.CreateSnapshot(ctx, "dev", "s2"); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("failed save: %v", err)
	}
	snap.SaveErr = nil
	if all, _ := f.m.ListSnapshots(ctx); len(all) != 1 {
		t.Fatalf("a failed snapshot was kept: %+v", all)
	}
	if ents, _ := os.ReadDir(f.m.SnapshotsDir()); len(ents) != 1 {
		t.Fatalf("snapshot dirs after a failed one: %v", ents)
	}
	if got, _ := f.m.Get(ctx, "dev"); got.State != model.VMRunning || len(snap.Paused) != 0 {
		t.Fatalf("vm after a failed snapshot: %s, paused %v", got.State, snap.Paused)
	}

	for _, c := range []struct {
		name string
		err  error
		code string
		want string
	}{
		{"taken name", func() error { _, err := f.m.CreateSnapshot(ctx, "dev", "s1"); return err }(), errdefs.CodeConflict, "already exists"},
		{"bad name", func() error { _, err := f.m.CreateSnapshot(ctx, "dev", "a b"); return err }(), errdefs.CodeInvalid, "snapshot name"},
		{"missing vm", func() error { _, err := f.m.CreateSnapshot(ctx, "nope", ""); return err }(), errdefs.CodeNotFound, "nope"},
		{"fork count", func() error { _, err := f.m.Fork(ctx, "s1", 0, "", nil); return err }(), errdefs.CodeInvalid, "invalid count 0"},
		{"fork missing", func() error { _, err := f.m.Fork(ctx, "nope", 1, "", nil); return err }(), errdefs.CodeNotFound, `no snapshot or vm named "nope"`},
		{"fork without control channel", func() error { _, err := f.m.Fork(ctx, "s1", 2, "kid", nil); return err }(), errdefs.CodeUnavailable, "no control channel"},
	} {
		if errdefs.CodeOf(c.err) != c.code || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: %v (code %s), want %s with %q", c.name, c.err, errdefs.CodeOf(c.err), c.code, c.want)
		}
	}
	if all, _ := f.m.List(ctx); len(all) != 1 {
		t.Fatalf("a refused fork left vms: %d", len(all))
	}

	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.CreateSnapshot(ctx, "dev", ""); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "only a running vm") {
		t.Fatalf("snapshot of a stopped vm: %v", err)
	}
	if err := f.m.RemoveSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sn.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot dir left: %v", err)
	}
	if err := f.m.RemoveSnapshot(ctx, "s1"); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Fatalf("second remove: %v", err)
	}
}
