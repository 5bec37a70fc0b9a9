package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/firecracker/fcapi"
)

// Files of a saved state in its directory.
const (
	stateName  = "firecracker.vmstate" // devices and vCPUs (PUT /snapshot/create's snapshot_path)
	memoryName = "firecracker.mem"     // guest memory (mem_file_path)
)

// StateFiles names the vCPU and device state and the memory file Save
// writes in dir.
func (d *Driver) StateFiles(dir string) []string {
	return []string{filepath.Join(dir, stateName), filepath.Join(dir, memoryName)}
}

// Save pauses the guest (PATCH /vm Paused) and writes a full snapshot
// into dir (PUT /snapshot/create, which Firecracker takes only while
// paused). Firecracker stays up with the guest paused. On error the guest
// is resumed. See vmm.Snapshotter.
func (d *Driver) Save(ctx context.Context, h vmm.Handle, dir string) error {
	if !d.Alive(h) {
		return fmt.Errorf("firecracker pid %d on %s is not running", h.PID, h.APISocket)
	}
	c := newClient(h.APISocket)
	if err := c.do(ctx, http.MethodPatch, "/vm", fcapi.VM{State: "Paused"}, nil); err != nil {
		return fmt.Errorf("save firecracker state: %w", err)
	}
	f := d.StateFiles(dir)
	err := c.put(ctx, "/snapshot/create", fcapi.SnapshotCreate{SnapshotType: "Full", SnapshotPath: f[0], MemFilePath: f[1]})
	if err != nil {
		if rerr := d.Resume(context.Background(), h); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("save firecracker state: %w", err)
	}
	return nil
}

// Resume lets a guest paused by Save run again (PATCH /vm Resumed).
func (d *Driver) Resume(ctx context.Context, h vmm.Handle) error {
	return newClient(h.APISocket).do(ctx, http.MethodPatch, "/vm", fcapi.VM{State: "Resumed"}, nil)
}

// RestoreSequence returns the API calls that load the state in dir into
// a fresh firecracker for spec, in order: the logger and metrics (allowed
// before a load), then PUT /snapshot/load with the memory file as a File
// backend and the tap of spec as a network override of eth0, the guest
// left paused (Restore checks what was loaded before it lets the guest
// run). It does no I/O.
func RestoreSequence(spec vmm.Spec, files []string) []Request {
	var reqs []Request
	put := func(path string, body any) { reqs = append(reqs, Request{http.MethodPut, path, body}) }
	if spec.LogPath != "" {
		put("/logger", fcapi.Logger{LogPath: spec.LogPath, Level: "Info", ShowLevel: true})
	}
	if spec.Metrics != "" {
		put("/metrics", fcapi.Metrics{MetricsPath: spec.Metrics})
	}
	load := fcapi.SnapshotLoad{
		SnapshotPath: files[0],
		MemBackend:   &fcapi.MemBackend{BackendType: "File", BackendPath: files[1]},
	}
	if spec.Net != nil && spec.Net.Tap != "" {
		load.NetworkOverrides = []fcapi.NetworkOverride{{IfaceID: "eth0", HostDevName: spec.Net.Tap}}
	}
	put("/snapshot/load", load)
	return reqs
}

// Restore starts a fresh firecracker for spec, loads the state in dir
// (RestoreSequence), checks that the loaded machine opened spec's disks
// and vsock socket (CheckRestored) and only then lets the guest run. The vsock socket the snapshot recorded must not exist
// when it is loaded: like Start, a stale one at spec.VsockPath (left by
// the firecracker that saved the state) is removed first, and one a live
// process answers on is refused.
// The memory file is mapped privately by firecracker: once Restore
// returns, dir may be unlinked, the mapping keeps the pages. See
// vmm.Snapshotter.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, dir string) (vmm.Handle, error) {
	bin, err := d.binary()
	if err != nil {
		return vmm.Handle{}, err
	}
	if spec.APISocket == "" {
		return vmm.Handle{}, fmt.Errorf("spec for %q has no api socket", spec.Name)
	}
	h, err := d.run(ctx, bin, spec, RestoreSequence(spec, d.StateFiles(dir)))
	if err != nil {
		return h, err
	}
	c := newClient(spec.APISocket)
	var cfg fcapi.VMConfig
	err = c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg)
	if err == nil {
		err = CheckRestored(spec, cfg)
	}
	if err == nil {
		err = c.do(ctx, http.MethodPatch, "/vm", fcapi.VM{State: "Resumed"}, nil)
	}
	if err != nil {
		_ = d.Kill(context.Background(), h)
		_ = d.Cleanup(spec)
		return vmm.Handle{}, fmt.Errorf("restore firecracker state: %w", err)
	}
	return h, nil
}

// CheckRestored says why the machine firecracker loaded (cfg, GET
// /vm/config after the load) is not spec's: a drive or the vsock socket
// that resolves (relative paths in spec.Dir) to another file than spec
// names. A snapshot taken before its paths were relative (InDir) names
// its own VM's files, and a fork of it would write its parent's disks.
// Pure.
func CheckRestored(spec vmm.Spec, cfg fcapi.VMConfig) error {
	resolve := func(p string) string {
		if !filepath.IsAbs(p) && spec.Dir != "" {
			p = filepath.Join(spec.Dir, p)
		}
		return filepath.Clean(p)
	}
	want := map[string]string{}
	for _, dk := range spec.Disks {
		want[dk.ID] = filepath.Clean(dk.Path)
	}
	for _, dr := range cfg.Drives {
		if w, ok := want[dr.DriveID]; !ok || resolve(dr.PathOnHost) != w {
			return fmt.Errorf("the saved state's drive %s is %s, not this vm's %s: it was saved with another vm's paths (take a new snapshot)", dr.DriveID, dr.PathOnHost, w)
		}
	}
	if cfg.Vsock != nil && spec.VsockPath != "" && resolve(cfg.Vsock.UDSPath) != filepath.Clean(spec.VsockPath) {
		return fmt.Errorf("the saved state's vsock socket is %s, not this vm's %s: it was saved with another vm's paths (take a new snapshot)", cfg.Vsock.UDSPath, spec.VsockPath)
	}
	return nil
}
