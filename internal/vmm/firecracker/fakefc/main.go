// Command fakefc is a stand-in for the firecracker binary, used by banger's
// tests on hosts without Firecracker or without a KVM that runs guests. It
// takes firecracker v1.14's flags and serves the part of its REST API that
// banger uses on the --api-sock unix socket, with the answers v1.14.2 gives:
// 204 with an empty body on success, 400 {"fault_message": …} on a bad body
// or a request out of order, GET / state "Not started" → "Running" →
// "Paused", SendCtrlAltDel ending the process like a rebooting guest (exit
// 0), SIGTERM ending it with status 143. Snapshots follow v1.14.2's rules:
// PUT /snapshot/create only while Paused (it writes a small state file
// describing the machine and a sparse memory file of its size), PUT
// /snapshot/load only in a fresh process where nothing but the logger and
// metrics was configured, with network_overrides applied, and failing
// when the vsock socket the snapshot recorded already exists.
//
// Relative paths (drives, the vsock socket) resolve in its working
// directory and are recorded in a snapshot as given, as firecracker's are.
//
// Its vsock socket speaks firecracker's hybrid-vsock handshake ("CONNECT
// <port>\n" answered "OK <host port>\n", or the connection closed when no
// guest process listens on the port); a test puts a guest-side listener
// behind a port with the FAKEFC_VSOCK_FORWARD environment variable
// ("1024=/path/guest.sock"), which the fake relays the stream to.
//
// Where the answers come from: the API's status codes and bodies, the
// states, the snapshot rules (create only while paused, load only into a
// fresh process, the recorded vsock socket re-bound at load and refusing
// an existing file, network_overrides) and the vsock socket left on disk
// at exit were measured against firecracker v1.14.2 on this kind of host
// (TESTING-REAL-VMS.md in the project's shared notes). The hybrid-vsock
// handshake was not (no guest boots under firecracker there): it follows
// firecracker's documentation (docs/vsock.md): the CONNECT line, the "OK"
// answer with the host-side port, a closed connection for a port nobody
// listens on. The relative-path resolution follows from firecracker
// opening the paths it is given as they are.
//
// It boots nothing. Every request is appended as one JSON line
// {"method","path","body"} to <api-sock>.requests.jsonl, so that a test can
// check what a driver sent.
//
// It owns nothing outside its socket, that record file, the vsock socket it
// binds (like firecracker, at PUT /vsock, left behind at exit) and the log
// and metrics files it is told to write. Its wire types are the driver's
// (package fcapi).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger/banger/internal/vmm/firecracker/fcapi"
)

const version = "1.14.2"

type server struct {
	mu      sync.Mutex
	id      string
	state   string // "Not started", "Running", "Paused"
	machine fcapi.MachineConfig
	boot    *fcapi.BootSource
	drives  []fcapi.Drive
	ifaces  []fcapi.NetworkInterface
	vsock   *fcapi.Vsock
	logger  *fcapi.Logger
	metrics *fcapi.Metrics
	logf    *os.File
	record  *os.File
	pci     bool
	// forward maps guest vsock ports to the unix sockets serving them
	// (ForwardEnv); hostPort is the last host port handed out.
	forward  map[uint64]string
	hostPort uint64
	// configured: a boot-specific resource (machine, boot source,
	// drive, interface, vsock) was set, so a snapshot can no longer be
	// loaded.
	configured bool
}

// snapshotFile is what the fake writes as a snapshot's state file: the
// machine it was taken of.
type snapshotFile struct {
	Fake    string                   `json:"fakefc_snapshot"`
	Machine fcapi.MachineConfig      `json:"machine"`
	Boot    *fcapi.BootSource        `json:"boot"`
	Drives  []fcapi.Drive            `json:"drives"`
	Ifaces  []fcapi.NetworkInterface `json:"ifaces"`
	Vsock   *fcapi.Vsock             `json:"vsock"`
}

func main() {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	apiSock := fs.String("api-sock", "/run/firecracker.socket", "")
	id := fs.String("id", "anonymous-instance", "")
	enablePCI := fs.Bool("enable-pci", false, "")
	showVersion := fs.Bool("version", false, "")
	noAPI := fs.Bool("no-api", false, "")
	fs.String("config-file", "", "")
	fs.String("log-path", "", "")
	fs.String("level", "", "")
	fs.String("metrics-path", "", "")
	fs.Bool("boot-timer", false, "")
	fs.Bool("no-seccomp", false, "")
	fs.String("seccomp-filter", "", "")
	fs.String("metadata", "", "")
	fs.String("snapshot-version", "", "")
	fs.String("describe-snapshot", "", "")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(1)
	}
	if *showVersion {
		fmt.Printf("Firecracker v%s\n\n", version)
		return
	}
	if *noAPI {
		fmt.Fprintln(os.Stderr, "fakefc: --no-api is not supported by this fake")
		os.Exit(1)
	}
	if !regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`).MatchString(*id) {
		fmt.Fprintf(os.Stderr, "Invalid instance ID: %s\n", *id)
		os.Exit(1)
	}
	l, err := net.Listen("unix", *apiSock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to open the API socket at: %s. Check that it is not already used.\n", *apiSock)
		os.Exit(1)
	}
	rec, err := os.OpenFile(*apiSock+".requests.jsonl", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := &server{id: *id, state: "Not started", record: rec, pci: *enablePCI,
		forward: parseForward(os.Getenv(ForwardEnv)), hostPort: 1<<30 - 1}
	s.machine = withDefaults(fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 128})
	fmt.Printf("Running Firecracker v%s\n", version)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-sigs
		// firecracker exits with 128+signal and leaves its socket behind.
		os.Exit(128 + int(sig.(syscall.Signal)))
	}()
	_ = http.Serve(l, s)
}

func (s *server) fault(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(fcapi.Fault{FaultMessage: fmt.Sprintf(format, args...)})
	w.Write(b)
}

func (s *server) ok(w http.ResponseWriter) { w.WriteHeader(http.StatusNoContent) }

func (s *server) json(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	b, _ := json.Marshal(v)
	w.Write(b)
}

func (s *server) log(format string, args ...any) {
	if s.logf != nil {
		fmt.Fprintf(s.logf, "%s [%s:main] %s\n", time.Now().Format("2006-01-02T15:04:05.000000000"), s.id, fmt.Sprintf(format, args...))
	}
}

// decode reads a JSON body strictly into v, and refuses it when it lacks
// one of the required fields (fcapi's types cannot tell a zero from a
// missing field).
func decode(body []byte, v any, required ...string) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON body")
	}
	var present map[string]json.RawMessage
	_ = json.Unmarshal(body, &present)
	for _, f := range required {
		if v, ok := present[f]; !ok || string(v) == "null" {
			last := len(required) - 1
			if last == 0 {
				return fmt.Errorf("missing field `%s`", f)
			}
			return fmt.Errorf("missing field `%s` or `%s`", strings.Join(required[:last], "`, `"), required[last])
		}
	}
	return nil
}

// withDefaults fills what firecracker reports for fields a machine
// configuration left out.
func withDefaults(m fcapi.MachineConfig) fcapi.MachineConfig {
	if m.HugePages == "" {
		m.HugePages = "None"
	}
	if m.TrackDirtyPages == nil {
		m.TrackDirtyPages = new(bool)
	}
	return m
}

func exists(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	return f.Close()
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	var raw any = nil
	if len(body) > 0 {
		if json.Unmarshal(body, &raw) != nil {
			raw = string(body)
		}
	}
	line, _ := json.Marshal(map[string]any{"method": r.Method, "path": r.URL.Path, "body": raw})
	s.record.Write(append(line, '\n'))

	started := s.state != "Not started"
	preBoot := func() bool {
		if started {
			s.fault(w, 400, "The requested operation is not supported after starting the microVM.")
			return false
		}
		return true
	}
	bad := func(err error) {
		s.fault(w, 400, "An error occurred when deserializing the json body of a request: %v.", err)
	}
	p := r.URL.Path
	switch {
	case r.Method == "GET" && p == "/":
		s.json(w, fcapi.InstanceInfo{ID: s.id, State: s.state, VMMVersion: version, AppName: "Firecracker"})
	case r.Method == "GET" && p == "/version":
		s.json(w, map[string]any{"firecracker_version": version})
	case r.Method == "GET" && p == "/machine-config":
		s.json(w, s.machine)
	case r.Method == "GET" && p == "/vm/config":
		s.json(w, s.fullConfig())
	case r.Method == "PUT" && p == "/logger":
		var l fcapi.Logger
		if err := decode(body, &l); err != nil {
			bad(err)
			return
		}
		if !preBoot() {
			return
		}
		if l.LogPath != "" {
			f, err := os.OpenFile(l.LogPath, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				s.fault(w, 400, "Logger: %v", err)
				return
			}
			s.logf = f
		}
		s.logger = &l
		s.log("Running Firecracker v%s", version)
		if s.pci {
			s.log("PCI enabled")
		}
		s.ok(w)
	case r.Method == "PUT" && p == "/metrics":
		var m fcapi.Metrics
		if err := decode(body, &m); err != nil {
			bad(err)
			return
		}
		if !preBoot() {
			return
		}
		if err := exists(m.MetricsPath); err != nil {
			s.fault(w, 400, "Metrics: %v", err)
			return
		}
		s.metrics = &m
		s.ok(w)
	case r.Method == "PUT" && p == "/machine-config":
		var m fcapi.MachineConfig
		if err := decode(body, &m, "vcpu_count", "mem_size_mib"); err != nil {
			bad(err)
			return
		}
		if !preBoot() {
			return
		}
		if m.VcpuCount < 1 || m.VcpuCount > 32 || (m.VcpuCount > 1 && m.VcpuCount%2 == 1 && m.Smt) {
			s.fault(w, 400, "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
			return
		}
		if m.MemSizeMib < 1 {
			s.fault(w, 400, "The memory size (MiB) is invalid.")
			return
		}
		s.machine = withDefaults(m)
		s.configured = true
		s.ok(w)
	case r.Method == "PUT" && p == "/boot-source":
		var b fcapi.BootSource
		if err := decode(body, &b); err != nil {
			bad(err)
			return
		}
		if !preBoot() {
			return
		}
		if err := exists(b.KernelImagePath); err != nil {
			s.fault(w, 400, "The kernel file cannot be opened: %v", err)
			return
		}
		if b.InitrdPath != "" {
			if err := exists(b.InitrdPath); err != nil {
				s.fault(w, 400, "The initrd file cannot be opened due to invalid path or invalid permissions. %v", err)
				return
			}
		}
		s.boot = &b
		s.configured = true
		s.ok(w)
	case r.Method == "PUT" && strings.HasPrefix(p, "/drives/"):
		var d fcapi.Drive
		if err := decode(body, &d, "drive_id", "path_on_host", "is_root_device"); err != nil {
			bad(err)
			return
		}
		if d.DriveID == "" || d.PathOnHost == "" {
			bad(fmt.Errorf("missing field `drive_id`, `path_on_host` or `is_root_device`"))
			return
		}
		if d.DriveID != strings.TrimPrefix(p, "/drives/") {
			s.fault(w, 400, "The id from the path does not match the id from the body!")
			return
		}
		if !preBoot() {
			return
		}
		if err := exists(d.PathOnHost); err != nil {
			s.fault(w, 400, "Unable to create the block device: BackingFile(%v, %q)", err, d.PathOnHost)
			return
		}
		kept := s.drives[:0]
		for _, o := range s.drives {
			if o.DriveID == d.DriveID {
				continue
			}
			if o.IsRootDevice && d.IsRootDevice {
				s.fault(w, 400, "A root block device already exists!")
				return
			}
			kept = append(kept, o)
		}
		s.drives = append(kept, d)
		s.configured = true
		s.ok(w)
	case r.Method == "PUT" && strings.HasPrefix(p, "/network-interfaces/"):
		var n fcapi.NetworkInterface
		if err := decode(body, &n); err != nil {
			bad(err)
			return
		}
		if n.IfaceID == "" || n.HostDevName == "" {
			bad(fmt.Errorf("missing field `iface_id` or `host_dev_name`"))
			return
		}
		if n.IfaceID != strings.TrimPrefix(p, "/network-interfaces/") {
			s.fault(w, 400, "The id from the path does not match the id from the body!")
			return
		}
		if !preBoot() {
			return
		}
		if n.GuestMAC != "" {
			if _, err := net.ParseMAC(n.GuestMAC); err != nil {
				bad(err)
				return
			}
		}
		kept := s.ifaces[:0]
		for _, o := range s.ifaces {
			if o.IfaceID != n.IfaceID {
				kept = append(kept, o)
			}
		}
		s.ifaces = append(kept, n)
		s.configured = true
		s.ok(w)
	case r.Method == "PUT" && p == "/vsock":
		var v fcapi.Vsock
		if err := decode(body, &v, "guest_cid", "uds_path"); err != nil {
			bad(err)
			return
		}
		if v.UDSPath == "" {
			bad(fmt.Errorf("missing field `guest_cid` or `uds_path`"))
			return
		}
		if !preBoot() {
			return
		}
		if v.GuestCID < 3 {
			s.fault(w, 400, "Cannot create vsock device: invalid guest CID %d", v.GuestCID)
			return
		}
		// Firecracker binds uds_path as the device is configured and never
		// removes it, not even when it exits.
		l, err := net.Listen("unix", v.UDSPath)
		if err != nil {
			s.fault(w, 400, "Cannot create backend for vsock device: UnixBind(Os { code: 98, kind: AddrInUse, message: \"Address in use\" })")
			return
		}
		s.serveVsock(l)
		s.vsock = &v
		s.configured = true
		s.ok(w)
	case r.Method == "PUT" && p == "/actions":
		var a fcapi.Action
		if err := decode(body, &a); err != nil {
			bad(err)
			return
		}
		s.action(w, a)
	case r.Method == "PUT" && p == "/snapshot/create":
		var c fcapi.SnapshotCreate
		if err := decode(body, &c, "snapshot_path", "mem_file_path"); err != nil {
			bad(err)
			return
		}
		s.snapshotCreate(w, c)
	case r.Method == "PUT" && p == "/snapshot/load":
		var l fcapi.SnapshotLoad
		if err := decode(body, &l, "snapshot_path"); err != nil {
			bad(err)
			return
		}
		s.snapshotLoad(w, l)
	case r.Method == "PATCH" && p == "/vm":
		var v fcapi.VM
		if err := decode(body, &v); err != nil {
			bad(err)
			return
		}
		switch {
		case !started:
			s.fault(w, 400, "The requested operation is not supported before starting the microVM.")
		case v.State == "Paused":
			s.state = "Paused"
			s.log("The microVM has been paused")
			s.ok(w)
		case v.State == "Resumed":
			s.state = "Running"
			s.log("The microVM has been resumed")
			s.ok(w)
		default:
			bad(fmt.Errorf("unknown variant `%s`, expected `Paused` or `Resumed`", v.State))
		}
	default:
		s.fault(w, 400, "Invalid request method and/or path: %s %s.", r.Method, p)
	}
}

func (s *server) action(w http.ResponseWriter, a fcapi.Action) {
	switch a.ActionType {
	case "InstanceStart":
		if s.state != "Not started" {
			s.fault(w, 400, "The requested operation is not supported after starting the microVM.")
			return
		}
		if s.boot == nil {
			s.fault(w, 400, "Cannot start microvm without kernel configuration.")
			return
		}
		s.state = "Running"
		s.log("Successfully started microvm that was configured from one single json")
		s.ok(w)
	case "SendCtrlAltDel":
		if s.state == "Not started" {
			s.fault(w, 400, "The requested operation is not supported before starting the microVM.")
			return
		}
		s.ok(w)
		// The guest reboots a moment later; firecracker exits with 0.
		go func() {
			time.Sleep(100 * time.Millisecond)
			s.mu.Lock()
			s.log("Vmm is stopping.")
			os.Exit(0)
		}()
	case "FlushMetrics":
		if s.state == "Not started" {
			s.fault(w, 400, "The requested operation is not supported before starting the microVM.")
			return
		}
		s.ok(w)
	default:
		s.fault(w, 400, "An error occurred when deserializing the json body of a request: unknown variant `%s`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`.", a.ActionType)
	}
}

func (s *server) fullConfig() map[string]any {
	drives := s.drives
	if drives == nil {
		drives = []fcapi.Drive{}
	}
	ifaces := s.ifaces
	if ifaces == nil {
		ifaces = []fcapi.NetworkInterface{}
	}
	return map[string]any{
		"balloon":            nil,
		"drives":             drives,
		"boot-source":        s.boot,
		"cpu-config":         nil,
		"logger":             s.logger,
		"machine-config":     s.machine,
		"metrics":            s.metrics,
		"mmds-config":        nil,
		"network-interfaces": ifaces,
		"vsock":              s.vsock,
		"entropy":            nil,
		"pmem":               []any{},
	}
}

// ForwardEnv names the guest vsock ports the fake serves and where:
// "1024=/path/a.sock,52=/path/b.sock". A CONNECT to a listed port is
// relayed to that unix socket (a test's stand-in for the guest process
// listening on the port); any other port has no listener.
const ForwardEnv = "FAKEFC_VSOCK_FORWARD"

// parseForward reads ForwardEnv's value; bad entries are ignored.
func parseForward(v string) map[uint64]string {
	fwd := map[uint64]string{}
	for _, kv := range strings.Split(v, ",") {
		k, path, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if port, err := strconv.ParseUint(k, 10, 32); ok && err == nil && path != "" {
			fwd[port] = path
		}
	}
	return fwd
}

// serveVsock serves firecracker's hybrid vsock on l, a socket that stays
// on disk after the process ends, as firecracker's does. Each connection
// is one host-initiated stream: the first line must be "CONNECT <port>";
// with a listener for the port (ForwardEnv) the fake answers
// "OK <host port>" (host ports counted up from 2^30, as firecracker
// allocates them) and relays bytes both ways; a port nobody listens on,
// or a line that is not a CONNECT, gets the connection closed with no
// answer. While the VM is not running the answer waits, as the guest's
// does.
func (s *server) serveVsock(l net.Listener) {
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go s.vsockConn(c)
		}
	}()
}

func (s *server) vsockConn(c net.Conn) {
	defer c.Close()
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			return
		}
		if b[0] == '\n' {
			break
		}
		if line = append(line, b[0]); len(line) > 64 {
			return
		}
	}
	ps, ok := strings.CutPrefix(string(line), "CONNECT ")
	port, err := strconv.ParseUint(ps, 10, 32)
	if !ok || err != nil {
		return
	}
	for {
		s.mu.Lock()
		st := s.state
		s.mu.Unlock()
		if st == "Running" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	path, ok := s.forward[port]
	if !ok {
		return
	}
	g, err := net.Dial("unix", path)
	if err != nil {
		return
	}
	defer g.Close()
	s.mu.Lock()
	s.hostPort++
	hp := s.hostPort
	s.mu.Unlock()
	if _, err := fmt.Fprintf(c, "OK %d\n", hp); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(g, c); g.(*net.UnixConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, g); c.(*net.UnixConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// snapshotCreate writes the machine's description as the state file and
// a sparse memory file of its size, only while the VM is paused.
func (s *server) snapshotCreate(w http.ResponseWriter, c fcapi.SnapshotCreate) {
	switch {
	case s.state == "Not started":
		s.fault(w, 400, "The requested operation is not supported before starting the microVM.")
		return
	case s.state != "Paused":
		s.fault(w, 400, "Create snapshot error: Cannot save the microVM state: the microVM is not paused.")
		return
	}
	if c.SnapshotType != "" && c.SnapshotType != "Full" && c.SnapshotType != "Diff" {
		s.fault(w, 400, "An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Full` or `Diff`.", c.SnapshotType)
		return
	}
	b, _ := json.Marshal(snapshotFile{Fake: version, Machine: s.machine, Boot: s.boot, Drives: s.drives, Ifaces: s.ifaces, Vsock: s.vsock})
	if err := os.WriteFile(c.SnapshotPath, b, 0o600); err != nil {
		s.fault(w, 400, "Create snapshot error: Cannot write the microVM state file: %v", err)
		return
	}
	f, err := os.OpenFile(c.MemFilePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		err = f.Truncate(int64(s.machine.MemSizeMib) << 20)
		f.Close()
	}
	if err != nil {
		s.fault(w, 400, "Create snapshot error: Cannot write the memory file: %v", err)
		return
	}
	s.log("Snapshot created")
	s.ok(w)
}

// snapshotLoad restores a machine from a state file the fake wrote, only
// in a fresh process; the recorded vsock socket must not exist.
func (s *server) snapshotLoad(w http.ResponseWriter, l fcapi.SnapshotLoad) {
	if s.state != "Not started" {
		s.fault(w, 400, "The requested operation is not supported after starting the microVM.")
		return
	}
	if s.configured {
		s.fault(w, 400, "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		return
	}
	if l.MemBackend == nil || l.MemBackend.BackendPath == "" {
		s.fault(w, 400, "An error occurred when deserializing the json body of a request: missing field `mem_backend`.")
		return
	}
	if l.MemBackend.BackendType != "File" && l.MemBackend.BackendType != "Uffd" {
		s.fault(w, 400, "An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `File` or `Uffd`.", l.MemBackend.BackendType)
		return
	}
	b, err := os.ReadFile(l.SnapshotPath)
	if err != nil {
		s.fault(w, 400, "Load snapshot error: Failed to restore from snapshot: Failed to open snapshot file: %v", err)
		return
	}
	var snap snapshotFile
	if json.Unmarshal(b, &snap) != nil || snap.Fake == "" {
		s.fault(w, 400, "Load snapshot error: Failed to restore from snapshot: Failed to load microVM state: invalid snapshot file")
		return
	}
	if l.MemBackend.BackendType == "File" {
		fi, err := os.Stat(l.MemBackend.BackendPath)
		if err != nil {
			s.fault(w, 400, "Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: %v", err)
			return
		}
		if fi.Size() < int64(snap.Machine.MemSizeMib)<<20 {
			s.fault(w, 400, "Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: the memory file is smaller than the guest memory")
			return
		}
	}
	ifaces := snap.Ifaces
	for _, o := range l.NetworkOverrides {
		found := false
		for i := range ifaces {
			if ifaces[i].IfaceID == o.IfaceID {
				ifaces[i].HostDevName = o.HostDevName
				found = true
			}
		}
		if !found {
			s.fault(w, 400, "Load snapshot error: Invalid network override: no network interface with id %s in the snapshot", o.IfaceID)
			return
		}
	}
	for _, d := range snap.Drives {
		if err := exists(d.PathOnHost); err != nil {
			s.fault(w, 400, "Load snapshot error: Failed to restore from snapshot: Failed to build microVM from snapshot: Unable to create the block device: BackingFile(%v, %q)", err, d.PathOnHost)
			return
		}
	}
	if snap.Vsock != nil {
		// The socket the snapshot recorded is bound again: it must not exist.
		ln, err := net.Listen("unix", snap.Vsock.UDSPath)
		if err != nil {
			s.fault(w, 400, "Load snapshot error: Failed to restore from snapshot: Failed to build microVM from snapshot: Cannot restore devices: VsockUnixBackend(UnixBind(Os { code: 98, kind: AddrInUse, message: \"Address in use\" }))")
			return
		}
		s.serveVsock(ln)
	}
	s.machine, s.boot, s.drives, s.ifaces, s.vsock = snap.Machine, snap.Boot, snap.Drives, ifaces, snap.Vsock
	s.state = "Paused"
	if l.ResumeVM {
		s.state = "Running"
	}
	s.log("Snapshot loaded")
	s.ok(w)
}
