package vms

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"strconv"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/model"
)

// templateFormat changes whenever what the daemon puts into a booting
// guest changes (its kernel command line, its work disk's layout, what a
// restore tells it), so templates made before are stale.
const templateFormat = 2 // 2: QEMU guests reboot by triple fault (qemu.Cmdline)

// templateInputs is everything that decides what a warm-start template's
// guest is: a VM of this shape restored from the template is what a cold
// boot of the same shape would be, but for the identity it is told. Its
// canonical JSON is kept with the template; Key is the template's key.
// Pure: no I/O.
type templateInputs struct {
	Format         int    `json:"format"`
	ImageID        string `json:"image_id"`
	ImageChecksum  string `json:"image_checksum"`
	ImageRecipe    string `json:"image_recipe"` // the image's recipe key (its packages, scripts and banger-init)
	KernelID       string `json:"kernel_id"`
	KernelChecksum string `json:"kernel_checksums"` // vmlinux, bzImage and initrd
	KernelCmdline  string `json:"kernel_cmdline"`
	CPUs           int    `json:"cpus"`
	MemoryMiB      int    `json:"memory_mib"`
	DiskBytes      int64  `json:"disk_bytes"`
	VMM            string `json:"vmm"`
	CowStrategy    string `json:"cow_strategy"`
	// Guest is banger's guest side (guestSideKey): the banger-init the
	// daemon installs, the control protocol, the daemon's key and subnet.
	Guest string `json:"guest"`
}

// vmShape is a VM's shape as a template is looked up by it.
type vmShape struct {
	Image     model.Image
	Kernel    model.Kernel
	CPUs      int
	MemoryMiB int
	DiskBytes int64
	VMM       string
	Strategy  string
}

// request is the create request of a VM of shape s: what a create that
// resolves to s names (by ids).
func (s vmShape) request() api.CreateVMRequest {
	return api.CreateVMRequest{
		Image: s.Image.ID, Kernel: s.Kernel.ID, CPUs: s.CPUs,
		Memory: strconv.Itoa(s.MemoryMiB) + "M", Disk: strconv.FormatInt(s.DiskBytes, 10), VMM: s.VMM,
	}
}

// inputsOf is the template inputs of a shape under the daemon's current
// guest side.
func inputsOf(s vmShape, guest string) templateInputs {
	return templateInputs{
		Format:  templateFormat,
		ImageID: s.Image.ID, ImageChecksum: s.Image.Checksum, ImageRecipe: s.Image.RecipeKey,
		KernelID: s.Kernel.ID, KernelChecksum: s.Kernel.Checksums, KernelCmdline: s.Kernel.Cmdline,
		CPUs: s.CPUs, MemoryMiB: s.MemoryMiB, DiskBytes: s.DiskBytes, VMM: s.VMM, CowStrategy: s.Strategy,
		Guest: guest,
	}
}

// JSON is the inputs' canonical JSON (fields in declaration order).
func (t templateInputs) JSON() string {
	b, _ := json.Marshal(t) // plain fields: cannot fail
	return string(b)
}

// Key is the sha256 of the canonical JSON, in hex.
func (t templateInputs) Key() string {
	sum := sha256.Sum256([]byte(t.JSON()))
	return hex.EncodeToString(sum[:])
}

// guestSideKey names banger's guest side as a template depends on it:
// the banger-init binary the daemon installs in images it builds
// (initSum, "sha256:<hex>" or "" when there is none), the control
// protocol's version, the daemon's authorized key and the guest subnet
// (a restored guest keeps its resolver, the gateway). Pure.
func guestSideKey(initSum, authorizedKey string, subnet netip.Prefix) string {
	sum := sha256.Sum256([]byte(initSum + "\n" + strconv.Itoa(guestctl.Version) + "\n" + authorizedKey + "\n" + subnet.String()))
	return hex.EncodeToString(sum[:16])
}

// templateStale says why a template made with the inputs madeJSON is no
// longer fresh, or "" when it is: im and k are the template's image and
// kernel as now recorded (nil when removed), guest the daemon's current
// guest side. A stale template is never restored. Pure.
func templateStale(madeJSON string, im *model.Image, k *model.Kernel, guest string) string {
	var made templateInputs
	if err := json.Unmarshal([]byte(madeJSON), &made); err != nil {
		return "its record is unreadable"
	}
	switch {
	case made.Format != templateFormat:
		return "made by another version of banger"
	case im == nil:
		return "its image is gone"
	case im.ID != made.ImageID || im.Checksum != made.ImageChecksum || im.RecipeKey != made.ImageRecipe:
		return "its image changed"
	case k == nil:
		return "its kernel is gone"
	case k.ID != made.KernelID || k.Checksums != made.KernelChecksum || k.Cmdline != made.KernelCmdline:
		return "its kernel changed"
	case made.Guest != guest:
		return "banger's guest side changed (banger-init, the control protocol, the daemon's key or subnet)"
	}
	return ""
}

// pickTemplate finds the template a VM with the inputs want restores
// from: ready, of want's key, and made from exactly those inputs. Pure.
func pickTemplate(all []model.Snapshot, want templateInputs) (model.Snapshot, bool) {
	key, js := want.Key(), want.JSON()
	for _, sn := range all {
		if sn.Template == key && sn.TemplateInputs == js && sn.State == model.SnapshotReady {
			return sn, true
		}
	}
	return model.Snapshot{}, false
}

// staleOfShape says whether all holds a template of want's shape (the
// same image, kernel, sizes, VMM and disk strategy) made from other
// inputs than want's: someone warmed the shape, and its template went
// stale since (banger's guest side changed, say). Pure.
func staleOfShape(all []model.Snapshot, want templateInputs) bool {
	key := want.Key()
	for _, sn := range all {
		if sn.Template == "" || sn.Template == key {
			continue
		}
		var made templateInputs
		if json.Unmarshal([]byte(sn.TemplateInputs), &made) != nil {
			continue
		}
		if made.ImageID == want.ImageID && made.KernelID == want.KernelID && made.CPUs == want.CPUs &&
			made.MemoryMiB == want.MemoryMiB && made.DiskBytes == want.DiskBytes && made.VMM == want.VMM &&
			made.CowStrategy == want.CowStrategy {
			return true
		}
	}
	return false
}

// warmBuildLabel marks the VM a template is being made from; a daemon
// that dies meanwhile deletes it at its next start.
const warmBuildLabel = "banger.dev/warm-build"

// leftover says whether reconcile deletes a VM, and why: one made from a
// snapshot whose guest never took its own identity (its work disk may
// still hold its parent's SSH host key, so it could never boot right),
// and the VM a template was being made from. Pure.
func leftover(vm model.VM, pendingIdentity bool) (bool, string) {
	switch {
	case pendingIdentity:
		return true, "made from a snapshot, it never took its own identity (the daemon stopped first)"
	case vm.Labels[warmBuildLabel] != "":
		return true, "a template was being made from it when the daemon stopped"
	}
	return false, ""
}
