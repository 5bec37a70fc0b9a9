// Package vmstest holds in-memory stand-ins for the host parts the VM
// lifecycle composes: a VMM driver, a copy-on-write strategy and taps.
// Tests of the daemon and its services share them.
package vmstest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

// Driver is an in-memory VMM: processes are entries in a map keyed by
// api socket.
type Driver struct {
	mu        sync.Mutex
	Procs     map[string]int // api socket → pid
	nextPID   int
	StartErr  error
	Started   []vmm.Spec
	Shutdowns int
}

func NewDriver() *Driver { return &Driver{Procs: map[string]int{}, nextPID: 1000} }

func (f *Driver) Name() string                             { return "fake" }
func (f *Driver) Formats() []string                        { return []string{vmm.FormatQcow2, vmm.FormatRaw} }
func (f *Driver) InstallHint() string                      { return "nothing: it is a fake" }
func (f *Driver) Owns(string) bool                         { return false }
func (f *Driver) Available(context.Context) (bool, string) { return true, "fake" }
func (f *Driver) Cleanup(s vmm.Spec) error {
	return vmm.RemoveFiles(s.APISocket, s.VsockPath)
}
func (f *Driver) Start(ctx context.Context, s vmm.Spec) (vmm.Handle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.StartErr != nil {
		return vmm.Handle{}, f.StartErr
	}
	if _, ok := f.Procs[s.APISocket]; ok {
		return vmm.Handle{}, errors.New("api socket busy")
	}
	f.nextPID++
	f.Procs[s.APISocket] = f.nextPID
	f.Started = append(f.Started, s)
	return vmm.Handle{PID: f.nextPID, APISocket: s.APISocket}, nil
}
func (f *Driver) Shutdown(ctx context.Context, h vmm.Handle) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Shutdowns++
	delete(f.Procs, h.APISocket) // the guest powers off at once
	return nil
}
func (f *Driver) Kill(ctx context.Context, h vmm.Handle) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.Procs, h.APISocket)
	return nil
}
func (f *Driver) Find(sock string) (vmm.Handle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pid, ok := f.Procs[sock]; ok {
		return vmm.Handle{PID: pid, APISocket: sock}, nil
	}
	return vmm.Handle{}, vmm.ErrNotFound
}
func (f *Driver) Alive(h vmm.Handle) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	pid, ok := f.Procs[h.APISocket]
	return ok && pid == h.PID
}

// Strategy makes plain files and pretend loops.
type Strategy struct {
	CreateErr    error
	Detached     [][]string // the loops of each Detach
	DetachedDirs []string   // the VM directory of each Detach
}

func (s *Strategy) Name() string                    { return "qcow2" }
func (s *Strategy) Available(string) (bool, string) { return true, "" }
func (s *Strategy) Format() string                  { return "qcow2" }
func (s *Strategy) Create(ctx context.Context, image, dir string) error {
	if s.CreateErr != nil {
		return s.CreateErr
	}
	// A real overlay's header, of the image's size, as the daemon checks
	// it before a start.
	abs, err := filepath.Abs(image)
	if err != nil {
		return err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return err
	}
	b, err := storage.Qcow2Overlay(abs, (fi.Size()+511)&^511)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "system.fake"), b, 0o600)
}
func (s *Strategy) Attach(ctx context.Context, image, dir string) (storage.SystemDisk, error) {
	return storage.SystemDisk{Path: filepath.Join(dir, "system.fake"), Format: "qcow2", Loops: []string{"/dev/loop-fake"}}, nil
}
func (s *Strategy) Detach(ctx context.Context, d storage.SystemDisk) error {
	s.Detached = append(s.Detached, d.Loops)
	s.DetachedDirs = append(s.DetachedDirs, d.VMDir)
	return nil
}
func (s *Strategy) Remove(ctx context.Context, dir string) error {
	return os.Remove(filepath.Join(dir, "system.fake"))
}

// Taps records the taps it was asked to make, keyed by name: Made, and
// the policy each has in force, Policies. Like hostnet.Network it checks
// policies against 172.16.0.0/24 on bridge banger0; with NeedsNft it acts
// as the iptables backend and refuses any policy but the default;
// ApplyErr fails the next ApplyPolicy calls. A tap whose policy has
// host names that ParkTap took is Parked (with its guest's address and
// policy) until DeleteTap or CreateTap; CreateTap of a parked tap for
// its guest is recorded in Unparked (the real one puts its name sets
// back).
type Taps struct {
	mu       sync.Mutex
	Made     map[string]bool
	Held     map[string]bool // made with Guest.Held and not raised yet
	Raised   []string        // each RaiseTap's tap
	Parked   map[string]hostnet.ParkedNames
	Unparked []string
	IPs      map[string]netip.Addr // each made tap's guest address
	Policies map[string]hostnet.Policy
	Applied  int // ApplyPolicy calls that succeeded
	NeedsNft bool
	ApplyErr error
}

func (f *Taps) CreateTap(ctx context.Context, name string, g hostnet.Guest) error {
	if len(g.MAC) != 6 || !g.IP.Is4() {
		return fmt.Errorf("tap %s for guest %+v", name, g)
	}
	if err := f.CheckPolicy(name, g); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.Parked[name]; ok {
		if p.IP == g.IP {
			f.Unparked = append(f.Unparked, name)
		}
		delete(f.Parked, name)
	}
	f.Made[name] = true
	f.IPs[name] = g.IP
	f.Policies[name] = g.Policy
	if g.Held {
		f.Held[name] = true
	} else {
		delete(f.Held, name)
	}
	return nil
}
func (f *Taps) RaiseTap(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.Made[name] {
		return fmt.Errorf("raise tap %s: no such tap", name)
	}
	delete(f.Held, name)
	f.Raised = append(f.Raised, name)
	return nil
}

// IsHeld reports whether tap name is made and held down.
func (f *Taps) IsHeld(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Held[name]
}
func (f *Taps) DeleteTap(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.Parked, name)
	return f.deleteTap(name)
}
func (f *Taps) ParkTap(ctx context.Context, name string) (*hostnet.ParkedNames, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Made[name] && len(f.Policies[name].Names) > 0 {
		f.Parked[name] = hostnet.ParkedNames{IP: f.IPs[name], Policy: f.Policies[name]}
	}
	if err := f.deleteTap(name); err != nil {
		return nil, err
	}
	if p, ok := f.Parked[name]; ok {
		return &p, nil
	}
	return nil, nil
}

// Repark records p as parked for name, as a daemon restart's would.
func (f *Taps) Repark(name string, p hostnet.ParkedNames) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Parked[name] = p
	return nil
}

// IsParked reports whether tap name was parked and not made again.
func (f *Taps) IsParked(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.Parked[name]
	return ok
}

func (f *Taps) deleteTap(name string) error {
	delete(f.Held, name)
	delete(f.Made, name)
	delete(f.Policies, name)
	return nil
}
func (f *Taps) CheckPolicy(name string, g hostnet.Guest) error {
	f.mu.Lock()
	needsNft := f.NeedsNft
	f.mu.Unlock()
	if needsNft && !g.Policy.IsDefault() {
		return fmt.Errorf("tap %s: %w", name, hostnet.ErrPolicyNeedsNft)
	}
	_, err := hostnet.PolicyScript("banger0", netip.MustParsePrefix("172.16.0.0/24"), name, g)
	return err
}
func (f *Taps) ApplyPolicy(ctx context.Context, name string, g hostnet.Guest) error {
	if err := f.CheckPolicy(name, g); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ApplyErr != nil {
		return f.ApplyErr
	}
	if !f.Made[name] {
		return fmt.Errorf("apply policy to tap %s: no such tap", name)
	}
	f.Policies[name] = g.Policy
	f.Applied++
	return nil
}

// Policy is the policy in force on tap name, and whether the tap exists.
func (f *Taps) Policy(name string) (hostnet.Policy, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.Policies[name]
	return p, ok
}
func (f *Taps) Gateway() netip.Addr { return netip.MustParseAddr("172.16.0.1") }

// NewTaps makes an empty Taps.
func NewTaps() *Taps {
	return &Taps{Made: map[string]bool{}, Held: map[string]bool{}, Parked: map[string]hostnet.ParkedNames{}, IPs: map[string]netip.Addr{}, Policies: map[string]hostnet.Policy{}}
}

// State makes a state directory in a temp dir with an open store (closed
// at the test's end), its VM, image and kernel directories, and a default
// image and kernel recorded: what a daemon or VM manager under test runs
// over.
func State(t testing.TB) (config.Config, *store.Store) {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Defaults()
	cfg.StateDir = dir
	cfg.CacheDir = filepath.Join(dir, "cache")
	cfg.Finish()
	st, err := store.Open(cfg.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, p := range []string{cfg.VMsDir(), cfg.ImagesDir(), cfg.KernelsDir()} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	imgPath := filepath.Join(cfg.ImagesDir(), "img.ext4")
	if err := os.WriteFile(imgPath, []byte("image"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateImage(ctx, model.Image{ID: model.NewID(), Name: "default", Path: imgPath, HostKey: "ssh-ed25519 AAAA", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateKernel(ctx, model.Kernel{ID: model.NewID(), Name: cfg.DefaultKernel, VmlinuxPath: "/k", Cmdline: "console=ttyS0", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return cfg, st
}

// SnapDriver is a Driver with the Snapshotter ability: Save writes a
// file naming the VM's api socket into the state directory and marks the
// guest paused; Restore starts a process from such a file.
type SnapDriver struct {
	*Driver
	SaveErr    error
	RestoreErr error
	Paused     map[string]bool // api socket → guest paused by Save
	Restored   []vmm.Spec
}

var _ vmm.Snapshotter = (*SnapDriver)(nil)

func NewSnapDriver() *SnapDriver {
	return &SnapDriver{Driver: NewDriver(), Paused: map[string]bool{}}
}

func (f *SnapDriver) StateFiles(dir string) []string {
	return []string{filepath.Join(dir, "fake.state")}
}

func (f *SnapDriver) Save(ctx context.Context, h vmm.Handle, dir string) error {
	if !f.Alive(h) {
		return fmt.Errorf("vmm pid %d not running", h.PID)
	}
	if f.SaveErr != nil {
		return f.SaveErr
	}
	f.mu.Lock()
	f.Paused[h.APISocket] = true
	f.mu.Unlock()
	return os.WriteFile(f.StateFiles(dir)[0], []byte(h.APISocket), 0o600)
}

func (f *SnapDriver) Resume(ctx context.Context, h vmm.Handle) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.Paused, h.APISocket)
	return nil
}

func (f *SnapDriver) Restore(ctx context.Context, s vmm.Spec, dir string) (vmm.Handle, error) {
	b, err := os.ReadFile(f.StateFiles(dir)[0])
	if err != nil {
		return vmm.Handle{}, err
	}
	if string(b) != s.APISocket {
		return vmm.Handle{}, fmt.Errorf("state of %s restored for %s", b, s.APISocket)
	}
	if f.RestoreErr != nil {
		return vmm.Handle{}, f.RestoreErr
	}
	h, err := f.Start(ctx, s)
	if err == nil {
		f.mu.Lock()
		f.Restored = append(f.Restored, s)
		f.Started = f.Started[:len(f.Started)-1]
		f.mu.Unlock()
	}
	return h, err
}
