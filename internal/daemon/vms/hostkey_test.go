package vms

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
)

func readKnownHosts(t *testing.T, vm model.VM) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vm.Dir, "known_hosts"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// noSeedLeft fails when a work disk seed (which held a private key) is
// still in the VM directory.
func noSeedLeft(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".work-seed") {
			t.Fatalf("work disk seed %s left in %s", e.Name(), dir)
		}
	}
}

func TestCreateGivesEachVMItsOwnHostKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	one, err := f.m.Create(ctx, api.CreateVMRequest{Name: "one", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	two, err := f.m.Create(ctx, api.CreateVMRequest{Name: "two", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range []model.VM{one, two} {
		if _, err := guest.ParseHostKey(vm.HostKey); err != nil || !strings.HasPrefix(vm.HostKey, "ssh-ed25519 ") {
			t.Fatalf("vm %s host key %q: %v", vm.Name, vm.HostKey, err)
		}
		rec, err := f.st.GetVM(ctx, vm.ID)
		if err != nil || rec.HostKey != vm.HostKey {
			t.Fatalf("stored host key of %s = %q, %v; want %q", vm.Name, rec.HostKey, err, vm.HostKey)
		}
		noSeedLeft(t, vm.Dir)
	}
	if one.HostKey == two.HostKey {
		t.Fatal("two VMs of one image share a host key")
	}

	// The work disk carries the private half where banger-init looks.
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("debugfs"); err == nil {
			priv, err := storage.ReadFile(ctx, one.WorkDisk, "/"+guestinit.WorkHostKey)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := ssh.ParsePrivateKey(priv)
			if err != nil {
				t.Fatalf("key on the work disk: %v", err)
			}
			if got := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))); got != one.HostKey {
				t.Fatalf("work disk key is %q, record says %q", got, one.HostKey)
			}
			pub, err := storage.ReadFile(ctx, one.WorkDisk, "/"+guestinit.WorkHostKey+".pub")
			if err != nil || string(pub) != one.HostKey+"\n" {
				t.Fatalf("public half on the work disk = %q, %v", pub, err)
			}
		}
	}

	// Booting pins the VM's key for `vm ssh`, and again after a restart.
	if _, err := f.m.Start(ctx, "one", nil); err != nil {
		t.Fatal(err)
	}
	want := guest.KnownHostsLine(one.GuestIP, one.HostKey) + "\n"
	if got := readKnownHosts(t, one); got != want || strings.HasPrefix(got, "#") {
		t.Fatalf("known_hosts = %q, want %q", got, want)
	}
	again, err := f.m.Restart(ctx, "one", nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.HostKey != one.HostKey || readKnownHosts(t, one) != want {
		t.Fatalf("restart changed the host key: %q, known_hosts %q", again.HostKey, readKnownHosts(t, one))
	}
}

func TestVMWithoutOwnHostKeyPinsImageKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	imageKey, err := guest.NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	imgPath := filepath.Join(f.cfg.ImagesDir(), "old.ext4")
	os.WriteFile(imgPath, []byte("image"), 0o600)
	if err := f.st.CreateImage(ctx, model.Image{ID: model.NewID(), Name: "old", Path: imgPath, HostKey: imageKey.Public, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "old", Image: "old", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// As recorded by a banger from before VMs had their own host key.
	vm.HostKey = ""
	if err := f.st.UpdateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Start(ctx, "old", nil); err != nil {
		t.Fatal(err)
	}
	if got, want := readKnownHosts(t, vm), guest.KnownHostsLine(vm.GuestIP, imageKey.Public)+"\n"; got != want {
		t.Fatalf("known_hosts = %q, want the image's key %q", got, want)
	}
}

func TestWriteWorkSeed(t *testing.T) {
	dir := t.TempDir()
	key, err := guest.NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := writeWorkSeed(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(seed) != dir {
		t.Fatalf("seed %s is not under the VM directory %s", seed, dir)
	}
	keyPath := filepath.Join(seed, guestinit.WorkHostKey)
	for path, want := range map[string]os.FileMode{
		seed:                  0o700 | os.ModeDir,
		filepath.Dir(keyPath): 0o700 | os.ModeDir,
		keyPath:               0o600,
		keyPath + ".pub":      0o644,
	} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode() != want {
			t.Fatalf("%s: mode %v, %v; want %v", path, fi.Mode(), err, want)
		}
	}
	if b, _ := os.ReadFile(keyPath); string(b) != string(key.Private) {
		t.Fatal("seed key differs from the generated one")
	}
	if b, _ := os.ReadFile(keyPath + ".pub"); string(b) != key.Public+"\n" {
		t.Fatalf("seed public key = %q", b)
	}
	if _, err := writeWorkSeed(dir, guest.HostKey{}); err == nil {
		t.Fatal("a seed without a key was written")
	}
}

func TestCreateWorkDiskRemovesSeed(t *testing.T) {
	key, err := guest.NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	vm := model.VM{Name: "x", Dir: dir, WorkDisk: filepath.Join(dir, "work.ext4"), DiskBytes: 64 << 20}
	if _, err := exec.LookPath("mkfs.ext4"); err == nil {
		if err := createWorkDisk(context.Background(), vm, key); err != nil {
			t.Fatal(err)
		}
		noSeedLeft(t, dir)
		os.Remove(vm.WorkDisk)
	}
	// A failing mkfs.ext4 removes it too.
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "mkfs.ext4"), []byte("#!/bin/sh\necho mkfs failed >&2\nexit 1\n"), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	if err := createWorkDisk(context.Background(), vm, key); err == nil || !strings.Contains(err.Error(), "mkfs failed") {
		t.Fatalf("createWorkDisk with a failing mkfs: %v", err)
	}
	noSeedLeft(t, dir)
}
