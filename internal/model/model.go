// Package model holds banger's data types: the durable records kept in the
// store (images, kernels, VMs, guest sessions), the transient VM handles kept
// only in memory and in a scratch file, and the validation of user input
// (names, sizes, identifiers).
//
// It does no I/O and imports nothing of banger's: every other package may
// depend on it, and it must depend on none of them.
package model

import (
	"fmt"
	"strings"
	"time"
)

// VMState is the lifecycle state of a VM as recorded in the store.
type VMState string

// VM states. A VM moves created → starting → running → stopping → stopped,
// and may land in failed from any of them, with LastError saying why. A
// running VM may also go pausing → paused (its whole state saved in its
// directory, no VMM process) and resuming → running again; a stop of a
// paused VM discards the saved state.
const (
	VMCreated  VMState = "created"
	VMStarting VMState = "starting"
	VMRunning  VMState = "running"
	VMStopping VMState = "stopping"
	VMStopped  VMState = "stopped"
	VMFailed   VMState = "failed"
	VMPausing  VMState = "pausing"
	VMPaused   VMState = "paused"
	VMResuming VMState = "resuming"
)

// Image is a read-only root filesystem (ext4) that VMs are created from.
// Images are shared by VMs and never written through.
type Image struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Path      string    `json:"path"`       // the ext4 file
	SizeBytes int64     `json:"size_bytes"` // apparent size of Path
	Checksum  string    `json:"checksum"`   // "sha256:<hex>" of Path
	Source    string    `json:"source"`     // "build" or "import"
	Init      string    `json:"init"`       // "fast", "systemd" or "" (unknown, imported)
	Recipe    string    `json:"recipe"`     // JSON of how it was made (recipe version, suite, packages, scripts…)
	RecipeKey string    `json:"recipe_key"` // hash of the recipe's inputs; the build cache key
	HostKey   string    `json:"host_key"`   // guest SSH host public key, authorized_keys format, pinned by the daemon
	CreatedAt time.Time `json:"created_at"`
}

// Kernel is a guest kernel usable by one or both VMMs.
type Kernel struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Version     string    `json:"version"`
	VmlinuxPath string    `json:"vmlinux_path"`           // uncompressed ELF, for Firecracker (and QEMU)
	BzImagePath string    `json:"bzimage_path,omitempty"` // compressed image, QEMU only
	InitrdPath  string    `json:"initrd_path,omitempty"`
	Cmdline     string    `json:"cmdline"`   // default kernel command line
	Source      string    `json:"source"`    // e.g. "catalog:debian-cloud-6.1 (linux-image-6.1.0-28-cloud-amd64 6.1.119-1)" or "import"
	Checksums   string    `json:"checksums"` // JSON map file→"sha256:<hex>"
	CreatedAt   time.Time `json:"created_at"`
}

// VM is what a VM *is*: its intent, identity and deterministic paths. What is
// currently true of it on the host (PID, tap, loops) lives in VMHandles.
type VM struct {
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	ImageID      string     `json:"image_id"`
	KernelID     string     `json:"kernel_id"`
	CPUs         int        `json:"cpus"`
	MemoryMiB    int        `json:"memory_mib"`
	DiskBytes    int64      `json:"disk_bytes"`      // work disk size
	DesiredState VMState    `json:"desired_state"`   // running, paused or stopped: what the user asked for
	State        VMState    `json:"state"`           // observed state
	VMM          string     `json:"vmm"`             // name of the VMM driver that runs it (firecracker, qemu)
	Accel        string     `json:"accel,omitempty"` // "kvm" or "tcg" (qemu)
	CowStrategy  string     `json:"cow_strategy"`    // storage strategy of the system disk
	GuestIP      string     `json:"guest_ip"`        // e.g. 172.16.0.2
	GuestMAC     string     `json:"guest_mac"`       // derived from the IP
	DNSName      string     `json:"dns_name"`        // <name>.<suffix>
	CID          uint32     `json:"cid"`             // vsock context id
	Dir          string     `json:"dir"`             // VM directory under the state dir
	APISocket    string     `json:"api_socket"`      // firecracker api socket or qemu QMP socket
	VsockSocket  string     `json:"vsock_socket"`    // host side of the vsock
	LogPath      string     `json:"log_path"`        // VMM log
	ConsolePath  string     `json:"console_path"`    // guest serial console
	MetricsPath  string     `json:"metrics_path"`    // firecracker metrics
	SystemDisk   string     `json:"system_disk"`     // per-VM copy-on-write system disk (overlay, clone or cow file)
	WorkDisk     string     `json:"work_disk"`       // per-VM persistent disk mounted at /root
	LastError    string     `json:"last_error,omitempty"`
	CreatedAt    time.Time  `json:"created_at"`
	UpdatedAt    time.Time  `json:"updated_at"`
	StartedAt    *time.Time `json:"started_at,omitempty"`
	Net          NetPolicy  `json:"net"` // what the guest may reach on the network

	// HostKey is the VM's own SSH host public key (authorized_keys
	// format), made at create and pinned by the daemon; empty for a VM
	// made before VMs had their own, whose image's key is pinned instead.
	HostKey string `json:"host_key,omitempty"`

	// ExpiresAt is the deadline (UTC) at which the daemon applies
	// ExpireAction to the VM; nil is none.
	ExpiresAt    *time.Time `json:"expires_at,omitempty"`
	ExpireAction string     `json:"expire_action,omitempty"` // TTLDelete, TTLStop or TTLPause, with ExpiresAt

	// IdleTimeoutSeconds, when above 0, is how long a running VM may go
	// without activity (exec, session I/O, file operations, forwarded
	// connections) before the daemon applies IdleAction to it.
	IdleTimeoutSeconds int    `json:"idle_timeout_seconds,omitempty"`
	IdleAction         string `json:"idle_action,omitempty"` // TTLDelete, TTLStop or TTLPause, with IdleTimeoutSeconds

	// Labels are the VM's key=value tags (labels.go), set when it is
	// made.
	Labels map[string]string `json:"labels,omitempty"`
	// IdleDeadline is when a running VM with an idle timeout and nothing
	// in progress becomes idle, as the daemon counts now; filled in by
	// `vm show` only.
	IdleDeadline *time.Time `json:"idle_deadline,omitempty"`

	// ImageName and KernelName name ImageID and KernelID; filled in by
	// `vm show` and `vm create` only.
	ImageName  string `json:"image_name,omitempty"`
	KernelName string `json:"kernel_name,omitempty"`

	// Ports are the VM's published ports with their live state; filled
	// in by `vm show` and (with --publish) `vm create` only.
	Ports []Forward `json:"ports,omitempty"`
}

// Snapshot is a point-in-time copy of a running VM: its guest's memory
// and device state and a copy-on-write capture of its system and work
// disks, all taken while the guest was paused for a moment, in the
// snapshot's own directory. New VMs resume from it (fork). It outlives
// the VM it was taken of, and is not removed while a VM made from it
// exists.
type Snapshot struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMID        string `json:"vm_id"`   // the VM it was taken of (may be deleted since)
	VMName      string `json:"vm_name"` // that VM's name then
	ImageID     string `json:"image_id"`
	KernelID    string `json:"kernel_id"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   int    `json:"memory_mib"`
	DiskBytes   int64  `json:"disk_bytes"` // work disk size
	VMM         string `json:"vmm"`
	CowStrategy string `json:"cow_strategy"`
	GuestIP     string `json:"guest_ip"`  // the guest's address when taken
	GuestMAC    string `json:"guest_mac"` // and its MAC
	// Net is the network policy of the VM it was taken of: VMs made from
	// it start with it unless their create names another.
	Net       NetPolicy     `json:"net"`
	Dir       string        `json:"dir"`
	SizeBytes int64         `json:"size_bytes"` // bytes on the host's disk
	State     SnapshotState `json:"state"`
	CreatedAt time.Time     `json:"created_at"`
	// UsedBy names the VMs made from it; filled in by show and list.
	UsedBy []string `json:"used_by,omitempty"`
	// BaseID is the snapshot its system disk reads through: the one its
	// VM was made from, "" for none (the VM's image), or
	// SnapshotBaseUnknown for a snapshot taken before banger recorded it
	// whose VM is gone.
	BaseID string `json:"-"`
	// Base names BaseID's snapshot ("unknown" for SnapshotBaseUnknown);
	// filled in by show only.
	Base string `json:"base,omitempty"`

	// Template, set, makes it a warm-start template: the key of the VM
	// shape it restores (image, kernel, sizes, VMM, banger's guest
	// side), with TemplateInputs the canonical JSON of what made it. A
	// template is the daemon's own: `vm snapshot` does not show it.
	Template       string `json:"template,omitempty"`
	TemplateInputs string `json:"template_inputs,omitempty"`
	// Stale says why a template is no longer used (its image, kernel or
	// banger's guest side changed); filled in by the template list.
	Stale string `json:"stale,omitempty"`
	// ImageName names ImageID; filled in by the template list.
	ImageName string `json:"image_name,omitempty"`
	// Spares is how many spare VMs restored from the template are ready
	// (config warm_pool); filled in by the template list.
	Spares int `json:"spares,omitempty"`
}

// SnapshotBaseUnknown is the BaseID of a snapshot whose base is not
// known.
const SnapshotBaseUnknown = "?"

// SnapshotState is a snapshot's life: creating until every file is
// whole, then ready. A snapshot whose capture failed after its VM's
// system disk was taken into it in place is failed: it only holds the
// file that VM reads through, until the daemon has copied it up.
type SnapshotState string

// Snapshot states.
const (
	SnapshotCreating SnapshotState = "creating"
	SnapshotReady    SnapshotState = "ready"
	SnapshotFailed   SnapshotState = "failed"
)

// Forward is a published port of a VM: while the VM runs, the daemon
// listens on HostAddr:HostPort and relays each connection to GuestPort on
// the guest's loopback. The record lasts until it is removed or the VM is
// deleted; stopping the VM closes the listener, starting it opens it again.
type Forward struct {
	VMID      string    `json:"vm_id"`
	HostAddr  string    `json:"host_addr"`
	HostPort  int       `json:"host_port"`
	GuestPort int       `json:"guest_port"`
	Proto     string    `json:"proto"` // "tcp", the only one
	CreatedAt time.Time `json:"created_at"`
	// State is the listener's live state, filled in by the daemon's
	// answers: ForwardListening, ForwardStopped or ForwardFailed (Error
	// says why).
	State string `json:"state,omitempty"`
	Error string `json:"error,omitempty"`
}

// Live states of a Forward.
const (
	ForwardListening = "listening" // relaying connections
	ForwardStopped   = "stopped"   // the VM does not run: listens when it starts
	ForwardFailed    = "failed"    // the VM runs but the host port could not be listened on
)

// NetInternet is the network mode of a VM that was given none: DNS on the
// gateway and public addresses, nothing of the host's or other VMs'.
const NetInternet = "internet"

// NetPolicy is a VM's network policy as the user gave it, in canonical
// form (package hostnet parses and enforces it; model may not import it).
// AllowVMs holds VM names, not addresses: an address is freed when its VM
// is deleted and handed to the next one, so the daemon resolves the names
// each time it applies the policy.
type NetPolicy struct {
	Mode     string   `json:"mode"`                // none, internet or open
	Allow    []string `json:"allow,omitempty"`     // CIDR[:PORT[/tcp|udp]], then host names (example.com, *.example.com; mode none only)
	Deny     []string `json:"deny,omitempty"`      // CIDR
	AllowVMs []string `json:"allow_vms,omitempty"` // names of VMs this VM may open connections to
}

// String is a one-line summary for listings, e.g.
// "internet allow=10.0.0.5:5432 deny=203.0.113.0/24 vm=db".
func (p NetPolicy) String() string {
	s := p.Mode
	if s == "" {
		s = NetInternet
	}
	for _, f := range []struct {
		key   string
		items []string
	}{{"allow", p.Allow}, {"deny", p.Deny}, {"vm", p.AllowVMs}} {
		if len(f.items) > 0 {
			s += " " + f.key + "=" + strings.Join(f.items, ",")
		}
	}
	return s
}

// PinnedHostKey is the SSH host key the daemon expects vm's guest to
// serve: its own, or for a VM made before VMs had their own, its image's
// (im, which is read only then).
func (vm VM) PinnedHostKey(im Image) string {
	if vm.HostKey != "" {
		return vm.HostKey
	}
	return im.HostKey
}

// VMHandles is what is momentarily true of a running VM on the host. It is
// never stored in SQLite: the daemon keeps it in memory and mirrors it to
// handles.json in the VM directory, so that a restarted daemon can find and
// tear down what a dead one left behind.
type VMHandles struct {
	PID       int      `json:"pid,omitempty"`        // VMM process
	APISocket string   `json:"api_socket,omitempty"` // the socket the VMM was started with; identifies the process
	Tap       string   `json:"tap,omitempty"`
	Loops     []string `json:"loops,omitempty"`    // loop devices, e.g. /dev/loop3
	DMNames   []string `json:"dm_names,omitempty"` // device-mapper targets
	Bridge    string   `json:"bridge,omitempty"`
	Netns     string   `json:"netns,omitempty"`
}

// SessionStatus is the status of a guest session.
type SessionStatus string

// Guest session statuses. A session ends exited (code 0), failed (any
// other end), or stopped (it ended while banger was stopping it on request;
// its exit code is kept).
const (
	SessionStarting SessionStatus = "starting"
	SessionRunning  SessionStatus = "running"
	SessionStopping SessionStatus = "stopping"
	SessionExited   SessionStatus = "exited"
	SessionFailed   SessionStatus = "failed"
	SessionStopped  SessionStatus = "stopped"
)

// Finished reports whether a session status is final.
func (s SessionStatus) Finished() bool {
	return s == SessionExited || s == SessionFailed || s == SessionStopped
}

// Stdin modes of a guest session.
const (
	StdinPipe   = "pipe"
	StdinClosed = "closed"
)

// Attach backends of a guest session: how an attachment's input reaches it.
const (
	AttachFIFO = "fifo" // its stdin fifo
	AttachPTY  = "pty"  // its stdin fifo, copied onto its terminal (--tty)
)

// Session is a long-running process inside a VM, started and driven by banger.
type Session struct {
	ID            string            `json:"id"`
	VMID          string            `json:"vm_id"`
	Name          string            `json:"name"`
	Command       string            `json:"command"`
	Args          []string          `json:"args"`
	Env           map[string]string `json:"env,omitempty"`
	Cwd           string            `json:"cwd"`
	StdinMode     string            `json:"stdin_mode"` // pipe or closed
	Require       []string          `json:"require,omitempty"`
	Status        SessionStatus     `json:"status"`
	GuestPID      int               `json:"guest_pid,omitempty"`
	ExitCode      *int              `json:"exit_code,omitempty"`
	Attachable    bool              `json:"attachable"`
	Reattachable  bool              `json:"reattachable"`
	AttachMode    string            `json:"attach_mode,omitempty"`    // "exclusive"
	AttachBackend string            `json:"attach_backend,omitempty"` // AttachFIFO, AttachPTY (a --tty session) or none (stdin closed)
	LaunchStage   string            `json:"launch_stage,omitempty"`   // stage that failed at launch
	LaunchError   string            `json:"launch_error,omitempty"`   // message of that failure
	LaunchLog     string            `json:"launch_log,omitempty"`     // raw guest output of that failure
	Error         string            `json:"error,omitempty"`          // why it failed after launch
	StateDir      string            `json:"state_dir"`                // guest path of the state files
	CreatedAt     time.Time         `json:"created_at"`
	UpdatedAt     time.Time         `json:"updated_at"`
	StartedAt     *time.Time        `json:"started_at,omitempty"`
	EndedAt       *time.Time        `json:"ended_at,omitempty"`
}

// Sources of `vm logs`.
const (
	LogConsole = "console" // the guest's serial console (default)
	LogVMM     = "vmm"     // the VMM's own log
	LogAll     = "all"     // both, the VMM's first
)

// ValidateLogSource checks a `vm logs` source; empty means LogConsole.
func ValidateLogSource(source string) error {
	switch source {
	case "", LogConsole, LogVMM, LogAll:
		return nil
	}
	return fmt.Errorf("invalid log source %q: use %s, %s or %s", source, LogConsole, LogVMM, LogAll)
}
