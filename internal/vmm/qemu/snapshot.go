package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger/banger/internal/vmm"
)

// stateFD is the name the state file's descriptor is given in QEMU
// (QMP getfd), for the "fd:" migration URI.
const stateFD = "banger-state"

// StateFile is the migration stream Save writes in a state directory.
func StateFile(dir string) string { return filepath.Join(dir, "qemu.state") }

// StateFiles names the one file Save writes in dir.
func (d *Driver) StateFiles(dir string) []string { return []string{StateFile(dir)} }

// migrateBandwidth lifts QEMU's default migration rate limit (32 MiB/s),
// which would make saving a guest to a local file take seconds per 100 MB.
const migrateBandwidth = 64 << 30

// Save stops the vCPUs (QMP stop) and migrates the guest into
// StateFile(dir), passing the file to QEMU as a descriptor (QMP getfd,
// migrate "fd:…"): a confined QEMU runs in an empty chroot and can open no
// path. It waits for the migration to complete (query-migrate) and syncs
// the file. QEMU stays up, its guest paused ("postmigrate"). See
// vmm.Snapshotter.
func (d *Driver) Save(ctx context.Context, h vmm.Handle, dir string) error {
	if !d.Alive(h) {
		return fmt.Errorf("qemu pid %d on %s is not running", h.PID, h.APISocket)
	}
	f, err := os.OpenFile(StateFile(dir), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("qemu state file: %w", err)
	}
	defer f.Close()
	err = withQMP(ctx, h.APISocket, func(c *qmp) error {
		if err := c.execute(ctx, "stop", nil, nil); err != nil {
			return err
		}
		if err := c.execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": migrateBandwidth}, nil); err != nil {
			return err
		}
		if err := c.sendFD(ctx, stateFD, f); err != nil {
			return err
		}
		if err := c.execute(ctx, "migrate", map[string]any{"uri": "fd:" + stateFD}, nil); err != nil {
			return err
		}
		for {
			var st struct {
				Status    string `json:"status"`
				ErrorDesc string `json:"error-desc"`
			}
			if err := c.execute(ctx, "query-migrate", nil, &st); err != nil {
				return err
			}
			switch st.Status {
			case "completed":
				return nil
			case "failed", "cancelled":
				return fmt.Errorf("qemu migration to %s %s: %s", StateFile(dir), st.Status, st.ErrorDesc)
			}
			select {
			case <-ctx.Done():
				_ = c.execute(context.Background(), "migrate_cancel", nil, nil)
				return fmt.Errorf("qemu migration to %s: %w", StateFile(dir), ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		if tail := processLogTail(h.PID); tail != "" {
			err = fmt.Errorf("%w (qemu log: %s)", err, tail)
		}
		if rerr := d.Resume(context.Background(), h); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("save qemu state: %w", err)
	}
	return nil
}

// processLogTail is the end of the file a process writes its stderr to
// (the VMM log StartDetached gave it), for an error message; "" when it
// is not a regular file.
func processLogTail(pid int) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/2", pid))
	if err != nil || !filepath.IsAbs(p) {
		return ""
	}
	if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	return vmm.LogTail(p)
}

// Resume lets a guest paused by Save run again (QMP cont, which also
// takes back the disks a completed migration handed off), then drops the
// spare writable descriptor of a disk Overlay added (dropWritable; if
// that fails, the next Overlay of the disk refuses).
func (d *Driver) Resume(ctx context.Context, h vmm.Handle) error {
	// A guest left frozen is the worst outcome: a connection that fails
	// before QEMU answered is tried again, briefly.
	var err error
	for range 5 {
		answered := false
		err = withQMP(ctx, h.APISocket, func(c *qmp) error {
			answered = true
			if err := c.execute(ctx, "cont", nil, nil); err != nil {
				return err
			}
			_ = dropWritable(c)
			return nil
		})
		if err == nil || answered || !d.Alive(h) || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Restore starts QEMU for spec with -incoming defer and hands it
// StateFile(dir) as a descriptor (migrate-incoming "fd:…"); QEMU loads
// the state and runs the guest (no -S), and Restore returns once
// query-status says running. A state QEMU refuses (another machine, a
// torn file) ends QEMU, and the error carries its log's tail. See
// vmm.Snapshotter.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, dir string) (vmm.Handle, error) {
	f, err := os.Open(StateFile(dir))
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("qemu state: %w", err)
	}
	defer f.Close()
	return d.start(ctx, spec, f)
}
