package vmm

import (
	"context"
	"strings"
	"testing"

	"github.com/banger/banger/internal/errdefs"
)

// stubDriver is a Driver whose availability and ownership a test sets.
type stubDriver struct {
	name   string
	ok     bool
	owns   bool
	probed *[]string // names in the order Available was asked
}

func (s stubDriver) Name() string        { return s.name }
func (s stubDriver) Formats() []string   { return []string{FormatRaw} }
func (s stubDriver) InstallHint() string { return "install " + s.name }
func (s stubDriver) Available(context.Context) (bool, string) {
	if s.probed != nil {
		*s.probed = append(*s.probed, s.name)
	}
	if s.ok {
		return true, s.name + " works"
	}
	return false, s.name + " is missing"
}
func (s stubDriver) Start(context.Context, Spec) (Handle, error) { return Handle{}, nil }
func (s stubDriver) Shutdown(context.Context, Handle) error      { return nil }
func (s stubDriver) Kill(context.Context, Handle) error          { return nil }
func (s stubDriver) Find(string) (Handle, error)                 { return Handle{}, ErrNotFound }
func (s stubDriver) Alive(Handle) bool                           { return false }
func (s stubDriver) Owns(string) bool                            { return s.owns }
func (s stubDriver) Cleanup(Spec) error                          { return nil }

func TestRegistryGet(t *testing.T) {
	r := NewRegistry(stubDriver{name: "firecracker"}, stubDriver{name: "qemu"})
	if d, err := r.Get("qemu"); err != nil || d.Name() != "qemu" {
		t.Fatalf("Get(qemu) = %v, %v", d, err)
	}
	_, err := r.Get("bhyve")
	if err == nil || err.Error() != `unknown vmm "bhyve": use firecracker or qemu` || errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("Get(bhyve) = %v (code %s)", err, errdefs.CodeOf(err))
	}
	three := NewRegistry(stubDriver{name: "a"}, stubDriver{name: "b"}, stubDriver{name: "c"})
	if _, err := three.Get("x"); err == nil || !strings.HasSuffix(err.Error(), "use a, b or c") {
		t.Fatalf("Get with three drivers: %v", err)
	}
	if got := strings.Join(r.Names(), ","); got != "firecracker,qemu" {
		t.Fatalf("Names = %s", got)
	}
	all := r.All()
	all[0] = nil // a copy: the registry is unchanged
	if r.All()[0] == nil {
		t.Fatal("All returned the registry's own slice")
	}
}

func TestRegistryDuplicatePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a duplicate name")
		}
	}()
	NewRegistry(stubDriver{name: "qemu"}, stubDriver{name: "qemu"})
}

func TestRegistryPick(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		fcOK, qemuOK bool
		want         string
		picked       string // "" for an error
		code         string
		probed       string
		errText      string
	}{
		{true, true, "", "firecracker", "", "firecracker", ""},
		{false, true, "", "qemu", "", "firecracker,qemu", ""},
		{true, true, "auto", "firecracker", "", "firecracker", ""},
		{false, true, "auto", "qemu", "", "firecracker,qemu", ""},
		{false, false, "auto", "", errdefs.CodeUnavailable, "firecracker,qemu", "vmm qemu is not usable on this host: qemu is missing"},
		{true, true, "qemu", "qemu", "", "qemu", ""},
		{true, false, "qemu", "", errdefs.CodeUnavailable, "qemu", "vmm qemu is not usable on this host: qemu is missing"},
		{false, true, "firecracker", "", errdefs.CodeUnavailable, "firecracker", "vmm firecracker is not usable on this host: firecracker is missing"},
		{true, true, "xen", "", errdefs.CodeInvalid, "", `unknown vmm "xen": use firecracker or qemu`},
	} {
		var probed []string
		r := NewRegistry(stubDriver{name: "firecracker", ok: tc.fcOK, probed: &probed}, stubDriver{name: "qemu", ok: tc.qemuOK, probed: &probed})
		d, err := r.Pick(ctx, tc.want)
		got := ""
		if d != nil {
			got = d.Name()
		}
		if got != tc.picked || strings.Join(probed, ",") != tc.probed {
			t.Errorf("Pick(%q) fc=%v qemu=%v = %q (asked %v), want %q (asked %s)", tc.want, tc.fcOK, tc.qemuOK, got, probed, tc.picked, tc.probed)
		}
		if tc.picked == "" && (err == nil || errdefs.CodeOf(err) != tc.code || err.Error() != tc.errText) {
			t.Errorf("Pick(%q) error = %v (code %s), want %q (code %s)", tc.want, err, errdefs.CodeOf(err), tc.errText, tc.code)
		}
	}
	// One driver: auto takes it, or says why not.
	if d, err := NewRegistry(stubDriver{name: "qemu", ok: true}).Pick(ctx, ""); err != nil || d.Name() != "qemu" {
		t.Fatalf("Pick with only qemu = %v, %v", d, err)
	}
	if _, err := NewRegistry().Pick(ctx, ""); errdefs.CodeOf(err) != errdefs.CodeUnavailable {
		t.Fatalf("Pick on an empty registry: %v", err)
	}
}

func TestRegistryOwner(t *testing.T) {
	if got := NewRegistry(stubDriver{name: "firecracker"}, stubDriver{name: "qemu", owns: true}).Owner("/d"); got != "qemu" {
		t.Fatalf("Owner with a claim = %q", got)
	}
	if got := NewRegistry(stubDriver{name: "firecracker"}, stubDriver{name: "qemu"}).Owner("/d"); got != "firecracker" {
		t.Fatalf("Owner with no claim = %q, want the preferred driver", got)
	}
	if got := NewRegistry().Owner("/d"); got != "" {
		t.Fatalf("Owner of an empty registry = %q", got)
	}
}

func TestSetKernelArg(t *testing.T) {
	for _, tc := range []struct{ in, arg, want string }{
		{"console=ttyS0 reboot=k panic=1", "reboot=t", "console=ttyS0 panic=1 reboot=t"},
		{"root=/dev/vda", "reboot=t", "root=/dev/vda reboot=t"},
		{"reboot=k reboot=b rebooted=1", "reboot=t", "rebooted=1 reboot=t"},
		{"quiet a", "quiet", "a quiet"},
		{"", "reboot=t", "reboot=t"},
	} {
		if got := SetKernelArg(tc.in, tc.arg); got != tc.want {
			t.Errorf("SetKernelArg(%q, %q) = %q, want %q", tc.in, tc.arg, got, tc.want)
		}
	}
}

func TestKernelArgs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		args []string
		want string
	}{
		{"root=/dev/vda", []string{"console=ttyS0", "reboot=k"}, "root=/dev/vda console=ttyS0 reboot=k"},
		{"console=hvc0 reboot=t", []string{"console=ttyS0", "reboot=k"}, "console=hvc0 reboot=t"},
		{"  a   b ", []string{"console=ttyS0"}, "a b console=ttyS0"},
		{"consoleblank=0", []string{"console=ttyS0"}, "consoleblank=0 console=ttyS0"},
		{"quiet", []string{"quiet", "nokaslr"}, "quiet nokaslr"},
		{"", nil, ""},
	} {
		if got := KernelArgs(tc.in, tc.args...); got != tc.want {
			t.Errorf("KernelArgs(%q, %q) = %q, want %q", tc.in, tc.args, got, tc.want)
		}
	}
}
