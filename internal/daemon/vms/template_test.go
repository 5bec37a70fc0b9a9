package vms

import (
	"net/netip"
	"testing"

	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/model"
)

func testShape() vmShape {
	return vmShape{
		Image:  model.Image{ID: "im1", Name: "default", Checksum: "sha256:aa", RecipeKey: "r1", Init: "fast"},
		Kernel: model.Kernel{ID: "k1", Checksums: `{"vmlinux":"sha256:bb"}`, Cmdline: "console=ttyS0"},
		CPUs:   1, MemoryMiB: 512, DiskBytes: 1 << 30, VMM: "qemu", Strategy: "qcow2",
	}
}

func TestTemplateKeyNamesEveryInput(t *testing.T) {
	guest := guestSideKey("sha256:init", "ssh-ed25519 AAAA", netip.MustParsePrefix("172.16.0.0/24"))
	base := inputsOf(testShape(), guest)
	if base.Key() != inputsOf(testShape(), guest).Key() {
		t.Fatal("the same inputs gave two keys")
	}
	changes := map[string]func(*vmShape, *string){
		"image id":       func(s *vmShape, _ *string) { s.Image.ID = "im2" },
		"image content":  func(s *vmShape, _ *string) { s.Image.Checksum = "sha256:ab" },
		"image recipe":   func(s *vmShape, _ *string) { s.Image.RecipeKey = "r2" },
		"kernel":         func(s *vmShape, _ *string) { s.Kernel.ID = "k2" },
		"kernel files":   func(s *vmShape, _ *string) { s.Kernel.Checksums = "{}" },
		"kernel cmdline": func(s *vmShape, _ *string) { s.Kernel.Cmdline = "quiet" },
		"cpus":           func(s *vmShape, _ *string) { s.CPUs = 2 },
		"memory":         func(s *vmShape, _ *string) { s.MemoryMiB = 1024 },
		"disk":           func(s *vmShape, _ *string) { s.DiskBytes = 2 << 30 },
		"vmm":            func(s *vmShape, _ *string) { s.VMM = "firecracker" },
		"strategy":       func(s *vmShape, _ *string) { s.Strategy = "reflink" },
		"guest side": func(_ *vmShape, g *string) {
			*g = guestSideKey("sha256:other", "ssh-ed25519 AAAA", netip.MustParsePrefix("172.16.0.0/24"))
		},
	}
	for name, change := range changes {
		s, g := testShape(), guest
		change(&s, &g)
		if inputsOf(s, g).Key() == base.Key() {
			t.Errorf("a change of %s kept the key", name)
		}
	}
	for name, g := range map[string]string{
		"daemon key": guestSideKey("sha256:init", "ssh-ed25519 BBBB", netip.MustParsePrefix("172.16.0.0/24")),
		"subnet":     guestSideKey("sha256:init", "ssh-ed25519 AAAA", netip.MustParsePrefix("172.17.0.0/24")),
		"no init":    guestSideKey("", "ssh-ed25519 AAAA", netip.MustParsePrefix("172.16.0.0/24")),
	} {
		if g == guest {
			t.Errorf("a change of the %s kept the guest side", name)
		}
	}
}

func TestTemplateStale(t *testing.T) {
	s := testShape()
	made := inputsOf(s, "g1").JSON()
	im, k := s.Image, s.Kernel
	if why := templateStale(made, &im, &k, "g1"); why != "" {
		t.Fatalf("fresh template said stale: %s", why)
	}
	changedImage := im
	changedImage.Checksum = "sha256:ff"
	changedKernel := k
	changedKernel.Cmdline = "quiet"
	old := inputsOf(s, "g1")
	old.Format = templateFormat - 1
	for _, c := range []struct {
		name, made string
		im         *model.Image
		k          *model.Kernel
		guest      string
		want       string
	}{
		{"image gone", made, nil, &k, "g1", "its image is gone"},
		{"kernel gone", made, &im, nil, "g1", "its kernel is gone"},
		{"image changed", made, &changedImage, &k, "g1", "its image changed"},
		{"kernel changed", made, &im, &changedKernel, "g1", "its kernel changed"},
		{"guest side changed", made, &im, &k, "g2", "banger's guest side changed (banger-init, the control protocol, the daemon's key or subnet)"},
		{"older format", old.JSON(), &im, &k, "g1", "made by another version of banger"},
		{"garbage", "{", &im, &k, "g1", "its record is unreadable"},
	} {
		if got := templateStale(c.made, c.im, c.k, c.guest); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

func TestPickTemplate(t *testing.T) {
	want := inputsOf(testShape(), "g1")
	other := want
	other.CPUs = 4
	tmpl := func(name string, in templateInputs, st model.SnapshotState) model.Snapshot {
		return model.Snapshot{Name: name, Template: in.Key(), TemplateInputs: in.JSON(), State: st}
	}
	user := model.Snapshot{Name: "mine", State: model.SnapshotReady} // a user's snapshot is never a template
	forged := tmpl("forged", other, model.SnapshotReady)
	forged.Template = want.Key() // key and inputs disagree
	all := []model.Snapshot{user, tmpl("big", other, model.SnapshotReady), tmpl("half", want, model.SnapshotCreating), forged}
	if got, ok := pickTemplate(all, want); ok {
		t.Fatalf("picked %s with no fresh ready template of the shape", got.Name)
	}
	all = append(all, tmpl("right", want, model.SnapshotReady))
	if got, ok := pickTemplate(all, want); !ok || got.Name != "right" {
		t.Fatalf("picked %q (%v), want right", got.Name, ok)
	}
	// The daemon's guest side changed: the template is stale, not picked.
	if _, ok := pickTemplate(all, inputsOf(testShape(), "g2")); ok {
		t.Fatal("picked a template made under another guest side")
	}
}

// TestStaleOfShape: a template of the same shape made under another
// guest side or format counts; one of another shape, the fresh one, a
// user's snapshot or an unreadable record does not.
func TestStaleOfShape(t *testing.T) {
	want := inputsOf(testShape(), "g2")
	tmpl := func(in templateInputs) model.Snapshot {
		return model.Snapshot{Template: in.Key(), TemplateInputs: in.JSON(), State: model.SnapshotReady}
	}
	older := inputsOf(testShape(), "g1")
	oldFormat := want
	oldFormat.Format = 0
	bigger := older
	bigger.MemoryMiB = 1024
	otherImage := older
	otherImage.ImageID = "im2"
	unreadable := model.Snapshot{Template: "k", TemplateInputs: "{", State: model.SnapshotReady}
	user := model.Snapshot{TemplateInputs: older.JSON(), State: model.SnapshotReady}
	for _, c := range []struct {
		name string
		all  []model.Snapshot
		want bool
	}{
		{"none", nil, false},
		{"the fresh one", []model.Snapshot{tmpl(want)}, false},
		{"another shape", []model.Snapshot{tmpl(bigger), tmpl(otherImage)}, false},
		{"not templates", []model.Snapshot{unreadable, user}, false},
		{"made under another guest side", []model.Snapshot{tmpl(bigger), tmpl(older)}, true},
		{"made by another format", []model.Snapshot{tmpl(oldFormat)}, true},
	} {
		if got := staleOfShape(c.all, want); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLeftover(t *testing.T) {
	plain := model.VM{Name: "dev", State: model.VMStopped}
	build := model.VM{Name: "warm-build-1", State: model.VMRunning, Labels: map[string]string{warmBuildLabel: "0a1b"}}
	for _, c := range []struct {
		name    string
		vm      model.VM
		pending bool
		want    bool
	}{
		{"ordinary vm", plain, false, false},
		{"fork that took its identity", model.VM{Name: "kid-1", State: model.VMResuming}, false, false},
		{"fork that never took it (resuming)", model.VM{Name: "kid-1", State: model.VMResuming}, true, true},
		{"fork that never took it (created)", model.VM{Name: "kid-1", State: model.VMCreated}, true, true},
		{"fork that never took it (running)", model.VM{Name: "kid-1", State: model.VMRunning}, true, true},
		{"template build", build, false, true},
		{"user label of another key", model.VM{Name: "x", Labels: map[string]string{"app": "warm"}}, false, false},
	} {
		got, why := leftover(c.vm, c.pending)
		if got != c.want || (got && why == "") {
			t.Errorf("%s: got %v (%q), want %v", c.name, got, why, c.want)
		}
	}
}

func TestMachineIDOf(t *testing.T) {
	a, b := machineIDOf("d606260e16a1bbdda44ef72622826976"), machineIDOf("6b7a603106a65a9ae9e93606e440bd3f")
	if a == b || a != machineIDOf("d606260e16a1bbdda44ef72622826976") || len(a) != 32 || a == "d606260e16a1bbdda44ef72622826976" {
		t.Fatalf("machine ids %q, %q", a, b)
	}
	if err := (guestctl.Request{Op: guestctl.OpIdentity, MachineID: a}).Validate(); err != nil {
		t.Fatalf("the guest would refuse %q: %v", a, err)
	}
}

// TestShapeRequest: a shape's request parses back to the same sizes, by
// the parser a create uses, and names the image and kernel by id.
func TestShapeRequest(t *testing.T) {
	s := vmShape{Image: model.Image{ID: "img1"}, Kernel: model.Kernel{ID: "k1"}, CPUs: 3,
		MemoryMiB: 1536, DiskBytes: 4<<30 + 512, VMM: "qemu"}
	r := s.request()
	mem, err := sizeAtLeast("memory", r.Memory, "", 0)
	if err != nil || mem != 1536<<20 {
		t.Errorf("memory %q parses to %d, %v", r.Memory, mem, err)
	}
	disk, err := sizeAtLeast("disk", r.Disk, "", 0)
	if err != nil || disk != s.DiskBytes {
		t.Errorf("disk %q parses to %d, %v", r.Disk, disk, err)
	}
	if r.Image != "img1" || r.Kernel != "k1" || r.CPUs != 3 || r.VMM != "qemu" || r.Name != "" || r.Start {
		t.Errorf("request %+v", r)
	}
}
