// Package api is the contract between the banger CLI and bangerd: the wire
// types, the HTTP routes under /v1/ on the daemon's unix
// socket (server side: a handler over a Service), and the client the CLI
// uses. It holds no VM logic: the daemon implements Service.
package api

import (
	"context"
	"io"
	"net"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/version"
)

// DaemonInfo is what `banger daemon status` and `banger doctor` show, and what
// the CLI needs to exec ssh into a VM.
type DaemonInfo struct {
	Version  version.Info `json:"version"`
	PID      int          `json:"pid"`
	StateDir string       `json:"state_dir"`
	Socket   string       `json:"socket"`
	LogPath  string       `json:"log_path"`
	Netns    string       `json:"netns,omitempty"` // network namespace the daemon's networking lives in
	Started  string       `json:"started"`         // RFC 3339
}

// DoctorCheck is one line of `banger doctor`.
type DoctorCheck struct {
	Name   string `json:"name"` // "kvm-device", a VMM driver's name, "accel", "cow:<strategy>", "tun", "bin:<tool>", …
	OK     bool   `json:"ok"`
	Detail string `json:"detail"` // what was found
	Fix    string `json:"fix,omitempty"`
}

// DoctorReport is the host's capabilities and the choices the daemon makes.
type DoctorReport struct {
	VMM         string        `json:"vmm"`          // driver new VMs get
	Accel       string        `json:"accel"`        // kvm or tcg
	CowStrategy string        `json:"cow_strategy"` // strategy new VMs get
	NetworkMode string        `json:"network_mode"` // "host" or "netns:<name>"
	Checks      []DoctorCheck `json:"checks"`
}

// BuildImageRequest asks for an image made from distribution packages.
type BuildImageRequest struct {
	Name     string      `json:"name,omitempty"`
	Distro   string      `json:"distro,omitempty"` // "debian"
	Suite    string      `json:"suite,omitempty"`  // "bookworm"
	Packages []string    `json:"packages,omitempty"`
	Size     string      `json:"size,omitempty"`    // e.g. "2G"
	Init     string      `json:"init,omitempty"`    // "fast" or "systemd"
	Scripts  []NamedBlob `json:"scripts,omitempty"` // shell scripts run in the new root (content sent by the CLI)
	Copies   []CopySpec  `json:"copies,omitempty"`  // host files put into the image
	NoCache  bool        `json:"no_cache,omitempty"`
}

// NamedBlob is a file the CLI read on the user's behalf.
type NamedBlob struct {
	Name    string `json:"name"`
	Content []byte `json:"content"`
}

// CopySpec is a host path copied into the image at Dst. Src is read by the
// daemon (it runs as root on the same host).
type CopySpec struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// ImportImageRequest registers an existing ext4 file as an image.
type ImportImageRequest struct {
	Path string `json:"path"`
	Name string `json:"name,omitempty"`
}

// KernelEntry is a line of `kernel list`: a catalog entry, a pulled or
// imported kernel, or both.
type KernelEntry struct {
	Name        string        `json:"name"`
	Catalog     bool          `json:"catalog"`               // listed in the embedded catalog
	Description string        `json:"description,omitempty"` // from the catalog
	Kernel      *model.Kernel `json:"kernel,omitempty"`      // set when pulled or imported
}

// ImportKernelRequest registers a user's kernel.
type ImportKernelRequest struct {
	Name    string `json:"name"`
	Vmlinux string `json:"vmlinux"`
	BzImage string `json:"bzimage,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
}

// CreateVMRequest asks for a VM record and its disks.
type CreateVMRequest struct {
	Name   string `json:"name,omitempty"`
	Image  string `json:"image,omitempty"`  // name or id; default image when empty
	Kernel string `json:"kernel,omitempty"` // name or id; default kernel when empty
	CPUs   int    `json:"cpus,omitempty"`
	Memory string `json:"memory,omitempty"` // e.g. "1G"
	Disk   string `json:"disk,omitempty"`   // work disk size, e.g. "4G"
	VMM    string `json:"vmm,omitempty"`    // "" or "auto" (the daemon picks), or a VMM driver's name (firecracker, qemu)
	Start  bool   `json:"start,omitempty"`  // boot and wait for SSH after creating
	// The network policy (docs/network-and-storage.md): the daemon
	// validates it; all empty is the default, internet.
	Net      string   `json:"net,omitempty"`       // none, internet or open
	Allow    []string `json:"allow,omitempty"`     // CIDR[:PORT[/tcp|udp]]
	Deny     []string `json:"deny,omitempty"`      // CIDR
	AllowVMs []string `json:"allow_vms,omitempty"` // names (or ids) of other VMs this VM may connect to

	// A deadline counted from the create (docs/ARCHITECTURE.md,
	// "Deadlines"): the daemon validates both; empty TTL is none.
	TTL       string `json:"ttl,omitempty"`        // e.g. "90s", "10m", "2h", "7d"
	TTLAction string `json:"ttl_action,omitempty"` // delete (default), stop or pause; also for IdleTimeout
	// IdleTimeout deletes (or stops, TTLAction) the VM once it has been
	// idle that long while running: no exec, session I/O, file operation
	// or forwarded connection. Empty is none.
	IdleTimeout string `json:"idle_timeout,omitempty"`

	// Labels are the VM's key=value tags (model.ValidateLabels' rules).
	Labels map[string]string `json:"labels,omitempty"`

	// Publish are ports to publish, [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]
	// each: their host ports are taken before the VM is made, so a port
	// in use fails the create with nothing made.
	Publish []string `json:"publish,omitempty"`

	// FromSnapshot restores the VM from this snapshot (name or id)
	// instead of booting it, as `vm fork` does, with this create's name,
	// network policy, deadline, labels and ports; the VM has the
	// snapshot's image, kernel and sizes (those fields stay empty) and
	// runs whether or not Start is set.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// Cold boots the VM even when a fresh warm-start template of its
	// shape exists (`banger image warm`).
	Cold bool `json:"cold,omitempty"`
	// Ready is when a create that starts the VM answers: ReadySSH (the
	// default) once the daemon's SSH session runs commands in the guest
	// (a handshake proves a restored one), ReadyListening as soon as the
	// guest's sshd accepts connections, which it does once the guest's
	// set-up is done, without an SSH session: for clients that reach the
	// guest another way (the E2B control plane, through envd). The first
	// SSH use of such a VM makes the pooled connection.
	Ready string `json:"ready,omitempty"`
	// Envd has a booting guest start E2B's envd at once (banger.envd),
	// locked with a token nobody knows until the daemon gives it one, so
	// that a sandbox's create finds it running: for the E2B control
	// plane. Images whose PID 1 is banger-init only; a restored VM and
	// other images start it when told, as before.
	Envd bool `json:"envd,omitempty"`
}

// The values of CreateVMRequest.Ready.
const (
	ReadySSH       = ""
	ReadyListening = "listening"
)

// WarmRequest names the VM shape whose warm-start template the daemon
// makes: fields as in CreateVMRequest (empty: the configured defaults).
type WarmRequest struct {
	Image  string `json:"image,omitempty"`
	Kernel string `json:"kernel,omitempty"`
	CPUs   int    `json:"cpus,omitempty"`
	Memory string `json:"memory,omitempty"`
	Disk   string `json:"disk,omitempty"`
	VMM    string `json:"vmm,omitempty"`
}

// VMNetRequest changes a VM's network policy. A field left out keeps the
// VM's current value, a field given replaces it (an empty list clears
// it); Reset starts from the default (internet, nothing allowed or
// denied) before the fields given are applied.
type VMNetRequest struct {
	Net      *string   `json:"net,omitempty"`
	Allow    *[]string `json:"allow,omitempty"`
	Deny     *[]string `json:"deny,omitempty"`
	AllowVMs *[]string `json:"allow_vms,omitempty"`
	Reset    bool      `json:"reset,omitempty"`
}

// CreateSnapshotRequest names a new snapshot ("": "<vm>-<time>").
type CreateSnapshotRequest struct {
	Name string `json:"name,omitempty"`
}

// ForkRequest names what to fork (a snapshot, else a running or paused
// VM), how many VMs to make and their names' prefix ("": "<vm>-fork");
// they are named <prefix>-1 … <prefix>-<count>.
type ForkRequest struct {
	Source     string `json:"source"`
	Count      int    `json:"count"`
	NamePrefix string `json:"name_prefix,omitempty"`
	// What each fork gets, as CreateVMRequest's fields of the same
	// names; no network policy named: the snapshot's.
	Labels      map[string]string `json:"labels,omitempty"`
	TTL         string            `json:"ttl,omitempty"`
	TTLAction   string            `json:"ttl_action,omitempty"`
	IdleTimeout string            `json:"idle_timeout,omitempty"`
	Net         string            `json:"net,omitempty"`
	Allow       []string          `json:"allow,omitempty"`
	Deny        []string          `json:"deny,omitempty"`
	AllowVMs    []string          `json:"allow_vms,omitempty"`
}

// VMTTLRequest sets a VM's deadline to TTL from now, or clears it (TTL
// "none"), and its idle timeout to Idle (or clears it, "none"); an empty
// one is left as it is, but one must be given. An empty Action keeps the
// VM's current one (delete when it had none).
type VMTTLRequest struct {
	TTL    string `json:"ttl"`
	Action string `json:"action,omitempty"`
	Idle   string `json:"idle,omitempty"`
}

// StopVMRequest tunes a stop.
type StopVMRequest struct {
	TimeoutSeconds int  `json:"timeout_seconds,omitempty"` // graceful wait before killing; default 30
	Force          bool `json:"force,omitempty"`           // kill at once
}

// LogsRequest selects VM logs.
type LogsRequest struct {
	Source string `json:"source,omitempty"` // "console" (default), "vmm", "all"
	Tail   int    `json:"tail,omitempty"`   // last N lines; 0 = all
	Follow bool   `json:"follow,omitempty"`
}

// ExecRequest runs a command in a VM over the daemon's SSH client.
type ExecRequest struct {
	Command []string          `json:"command"` // argv; quoted for the guest shell by the daemon
	Env     map[string]string `json:"env,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	// TTY runs the command on a pseudo-terminal in the guest (an attached
	// exec only): its stdin, stdout and stderr are the terminal, so all
	// output comes as stdout. Size is the terminal's first size (default
	// 80x24); Term its TERM (default xterm-256color).
	TTY  bool        `json:"tty,omitempty"`
	Size *WindowSize `json:"size,omitempty"`
	Term string      `json:"term,omitempty"`
}

// SSHInfo is what the CLI needs to exec the system ssh into a VM.
type SSHInfo struct {
	Host           string `json:"host"` // guest IP
	User           string `json:"user"` // root
	Port           int    `json:"port"`
	KeyPath        string `json:"key_path"`         // daemon's private key (root-only)
	KnownHostsPath string `json:"known_hosts_path"` // pinned host key
	Netns          string `json:"netns,omitempty"`
}

// WorkspaceRequest prepares a repository in a VM. The tar stream of the
// files (made by the CLI, which can read the user's repository) is the
// request body.
type WorkspaceRequest struct {
	GuestPath string `json:"guest_path,omitempty"` // default /root/repo
	ReadOnly  bool   `json:"readonly,omitempty"`
	Mode      string `json:"mode,omitempty"` // "full" (with .git) or "tracked"
	Force     bool   `json:"force,omitempty"`
}

// WorkspaceInfo reports a prepared workspace.
type WorkspaceInfo struct {
	GuestPath string `json:"guest_path"`
	Files     int64  `json:"files"`
	Bytes     int64  `json:"bytes"`
	Head      string `json:"head,omitempty"` // guest HEAD commit after prepare
	// Transport is how the stream reached the guest: "tcp" (the data
	// channel) or "ssh" (the session, for guests that cannot receive).
	Transport string `json:"transport,omitempty"`
}

// ExportRequest asks for the guest repository's changes.
type ExportRequest struct {
	GuestPath string `json:"guest_path,omitempty"`
	Format    string `json:"format"`         // "bundle" or "patch"
	Base      string `json:"base,omitempty"` // host commit the workspace was prepared from; changes since it
	Message   string `json:"message,omitempty"`
}

// StartSessionRequest starts a guest session.
type StartSessionRequest struct {
	Name    string            `json:"name,omitempty"`
	Command string            `json:"command"`
	Args    []string          `json:"args,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	Stdin   string            `json:"stdin,omitempty"` // pipe (default) or closed
	Require []string          `json:"require,omitempty"`
	// TTY runs the command on a pseudo-terminal in the guest (its stdin
	// must be pipe): input goes to the terminal, all output to stdout.log.
	// Size is the terminal's first size (default 80x24).
	TTY  bool        `json:"tty,omitempty"`
	Size *WindowSize `json:"size,omitempty"`
}

// SessionLogsRequest selects a session's output.
type SessionLogsRequest struct {
	Stderr bool `json:"stderr,omitempty"`
	Tail   int  `json:"tail,omitempty"`
	Follow bool `json:"follow,omitempty"`
}

// StopSessionRequest stops a session.
type StopSessionRequest struct {
	Signal         string `json:"signal,omitempty"`          // default TERM
	TimeoutSeconds int    `json:"timeout_seconds,omitempty"` // then KILL; 0 = default 10
}

// AttachRequest tunes a session attachment.
type AttachRequest struct {
	// From is where the output starts: AttachFromEnd (default), the logs'
	// ends when the attachment begins in the guest, so that what the
	// session writes from then on arrives once and in full; or
	// AttachFromStart, the first byte of the logs (start --attach).
	From string `json:"from,omitempty"`
}

// Where an attachment's output starts.
const (
	AttachFromEnd   = "end"
	AttachFromStart = "start"
)

// AttachIO is one attachment's streams, of a session or of an exec. Stdin
// ends (EOF) when the client detaches or ends its input; Stdout and Stderr
// carry the output (of a session: from the attachment's starting offset).
// Resize, when not nil, delivers the client's terminal sizes: the latest
// one replaces one not yet taken, so a slow taker sees the newest size.
type AttachIO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Resize <-chan WindowSize
}

// Service is what the daemon offers. Refs are a name, a full id or a unique
// id prefix. Errors are *errdefs.Error values (see errors.go) so the handler maps
// them to status codes; any other error is "internal".
type Service interface {
	Info(ctx context.Context) DaemonInfo
	Doctor(ctx context.Context) DoctorReport

	ListImages(ctx context.Context) ([]model.Image, error)
	GetImage(ctx context.Context, ref string) (model.Image, error)
	BuildImage(ctx context.Context, req BuildImageRequest, report progress.Func) (model.Image, error)
	ImportImage(ctx context.Context, req ImportImageRequest, report progress.Func) (model.Image, error)
	RemoveImage(ctx context.Context, ref string) error

	ListKernels(ctx context.Context) ([]KernelEntry, error)
	GetKernel(ctx context.Context, ref string) (model.Kernel, error)
	PullKernel(ctx context.Context, name string, report progress.Func) (model.Kernel, error)
	ImportKernel(ctx context.Context, req ImportKernelRequest) (model.Kernel, error)
	RemoveKernel(ctx context.Context, ref string) error

	ListVMs(ctx context.Context) ([]model.VM, error)
	GetVM(ctx context.Context, ref string) (model.VM, error)
	CreateVM(ctx context.Context, req CreateVMRequest, report progress.Func) (model.VM, error)
	StartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error)
	StopVM(ctx context.Context, ref string, req StopVMRequest) (model.VM, error)
	RestartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error)
	// PauseVM saves a running VM's whole state (memory, vCPUs, devices)
	// in its directory and ends its VMM: state paused. ResumeVM (or
	// StartVM) restores it; StopVM discards the saved state.
	PauseVM(ctx context.Context, ref string) (model.VM, error)
	// ResumeVM restores a paused VM and waits until its guest answers,
	// with its clock set; sessions and processes go on where they were.
	ResumeVM(ctx context.Context, ref string, report progress.Func) (model.VM, error)
	DeleteVM(ctx context.Context, ref string, force bool) error
	// CreateSnapshot pauses a running VM for a moment, saves its whole
	// state and captures its disks into a new snapshot, and lets it run
	// on; of a paused VM it captures the saved state and disks as they
	// are, and the VM stays paused (docs/snapshots.md).
	CreateSnapshot(ctx context.Context, vmRef string, req CreateSnapshotRequest) (model.Snapshot, error)
	ListSnapshots(ctx context.Context) ([]model.Snapshot, error)
	GetSnapshot(ctx context.Context, ref string) (model.Snapshot, error)
	// RemoveSnapshot deletes a snapshot no VM was made from.
	RemoveSnapshot(ctx context.Context, ref string) error
	// Fork makes new VMs that resume from a snapshot (or from a snapshot
	// taken of a running VM first), each with its own identity, and
	// answers those made (all of them, unless it failed part way).
	Fork(ctx context.Context, req ForkRequest, report progress.Func) ([]model.VM, error)
	// WarmImage makes (or finds fresh) the warm-start template of a VM
	// shape: a booting create of that shape is restored from it.
	WarmImage(ctx context.Context, req WarmRequest, report progress.Func) (model.Snapshot, error)
	// ListTemplates lists the warm-start templates, each with why it is
	// stale, if it is.
	ListTemplates(ctx context.Context) ([]model.Snapshot, error)
	// RemoveTemplate deletes a template no VM was made from.
	RemoveTemplate(ctx context.Context, ref string) error
	// SetVMNet changes a VM's network policy: live when it runs (the old
	// one stays if that fails), at its next start otherwise.
	SetVMNet(ctx context.Context, ref string, req VMNetRequest) (model.VM, error)
	VMLogs(ctx context.Context, ref string, req LogsRequest, w io.Writer) error
	ExecVM(ctx context.Context, ref string, req ExecRequest, stdout, stderr io.Writer) (exitCode int, err error)
	// ExecVMAttached runs a command with its stdin streamed from
	// aio.Stdin (EOF when the client ends it), on a terminal when req.TTY
	// (then aio.Resize changes its size). A cancelled ctx ends the command.
	ExecVMAttached(ctx context.Context, ref string, req ExecRequest, aio AttachIO) (exitCode int, err error)
	SSHInfo(ctx context.Context, ref string) (SSHInfo, error)
	Hosts(ctx context.Context) (string, error) // /etc/hosts lines for running VMs

	PrepareWorkspace(ctx context.Context, ref string, req WorkspaceRequest, tar io.Reader) (WorkspaceInfo, error)
	ExportWorkspace(ctx context.Context, ref string, req ExportRequest, w io.Writer) error

	ListSessions(ctx context.Context, vmRef string) ([]model.Session, error)
	GetSession(ctx context.Context, vmRef, ref string) (model.Session, error)
	StartSession(ctx context.Context, vmRef string, req StartSessionRequest) (model.Session, error)
	SessionLogs(ctx context.Context, vmRef, ref string, req SessionLogsRequest, w io.Writer) error
	SendSession(ctx context.Context, vmRef, ref string, data io.Reader) (int64, error)
	AttachSession(ctx context.Context, vmRef, ref string, req AttachRequest, aio AttachIO) error
	StopSession(ctx context.Context, vmRef, ref string, req StopSessionRequest) (model.Session, error)
	KillSession(ctx context.Context, vmRef, ref string, signal string) (model.Session, error)
	RemoveSession(ctx context.Context, vmRef, ref string) error

	// SetVMTTL sets, extends or clears a VM's deadline.
	SetVMTTL(ctx context.Context, ref string, req VMTTLRequest) (model.VM, error)
	Files // files.go
	E2B   // e2b.go

	// AddPort publishes a port of a running VM; the answer holds the host
	// port picked for 0. RemovePort takes HOSTPORT or HOSTADDR:HOSTPORT.
	AddPort(ctx context.Context, ref string, req AddPortRequest) (model.Forward, error)
	RemovePort(ctx context.Context, ref, port string) error
	ListPorts(ctx context.Context, ref string) ([]model.Forward, error)
	// DialVM connects to TCP port (1-65535) of a running VM's guest the
	// way a published port does (the guest's address, else its loopback
	// through SSH) and returns the connection, which the caller closes.
	// Errors before the connection (VM not running, nothing listens) are
	// *errdefs.Error values.
	DialVM(ctx context.Context, ref string, port int) (net.Conn, error)
}

// AddPortRequest publishes a port of a running VM: Spec is
// [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp] (HOSTPORT 0: any free port), parsed
// by the daemon.
type AddPortRequest struct {
	Spec string `json:"spec"`
}
