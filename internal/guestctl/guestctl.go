// Package guestctl is banger's control channel to its guest side, a byte
// stream that needs no network: a virtio-serial port under QEMU (a unix
// socket in the VM directory on the host, /dev/vportNpM named PortName in
// the guest), a vsock port under Firecracker. It carries a tiny protocol
// (docs/control-channel.md): newline-delimited JSON, the host always
// asking, one request and one answer at a time, each line at most MaxLine
// bytes, every request carrying an id its answer repeats.
//
// The package holds both ends and nothing else: the wire types, the host's
// Call over a connection its VMM driver dialed, and the guest's Serve loop
// over a port cmd/banger-init opened, with a Handler that does the guest's
// work. It knows nothing of VMs, VMMs or how the stream is made.
//
// The guest is hostile: Call reads at most MaxLine bytes per line and at
// most maxStale stale lines before the answer, and parses the answer as
// untrusted JSON.
package guestctl

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"
)

// PortName is the virtio-serial port's name (QEMU's virtserialport
// name=, the guest's /sys/class/virtio-ports/*/name).
const PortName = "org.banger.ctl"

// VsockPort is the guest vsock port the channel listens on under
// Firecracker (the host writes "CONNECT 1024\n" on the VMM's vsock socket).
const VsockPort = 1024

// Version is the protocol version the guest reports in Hello.
const Version = 1

// MaxLine bounds one line in either direction, newline included.
const MaxLine = 64 << 10

// maxStale bounds the lines Call skips before its answer: answers to
// earlier requests whose asker went away (the port is one stream that
// outlives host connections).
const maxStale = 16

// Operations.
const (
	OpHello    = "hello"    // readiness: the guest side answers at all
	OpIdentity = "identity" // report who the guest is; set what the request names first
	OpClock    = "clock"    // set the wall clock
	OpPowerOff = "poweroff" // clean shutdown (the VMM then exits)
	OpEnvd     = "envd"     // give E2B's envd its token and environment, starting it when none runs
)

// Request is one line from the host.
type Request struct {
	ID string `json:"id"`
	Op string `json:"op"`
	// Identity: fields to change before answering; empty ones stay.
	Hostname  string `json:"hostname,omitempty"`
	MachineID string `json:"machine_id,omitempty"` // 32 lowercase hex digits
	Seed      []byte `json:"seed,omitempty"`       // mixed into the entropy pool (at most 512 bytes)
	MAC       string `json:"mac,omitempty"`        // eth0's new hardware address
	Addr      string `json:"addr,omitempty"`       // eth0's new IPv4 prefix ("172.16.0.5/24"), replacing its others
	Gateway   string `json:"gw,omitempty"`         // the default route, with Addr
	HostKey   []byte `json:"host_key,omitempty"`   // sshd's new ed25519 private key (OpenSSH PEM), at most 4 KiB
	HostPub   string `json:"host_pub,omitempty"`   // its public half, one authorized_keys line
	// Clock: the host's wall clock, nanoseconds since the epoch.
	UnixNano int64 `json:"unix_ns,omitempty"`
	// Envd: the access token envd must demand, and its default
	// environment as KEY=VALUE entries.
	EnvdToken string   `json:"envd_token,omitempty"`
	EnvdEnv   []string `json:"envd_env,omitempty"`
}

// Reply is one line from the guest.
type Reply struct {
	ID    string `json:"id"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Hello.
	Version int    `json:"version,omitempty"`
	BootID  string `json:"boot_id,omitempty"`
	// Every answer: the guest's wall clock when it answered.
	UnixNano int64 `json:"unix_ns,omitempty"`
	// Identity.
	Identity *Identity `json:"identity,omitempty"`
}

// Identity is who the guest says it is.
type Identity struct {
	Hostname  string   `json:"hostname"`
	MachineID string   `json:"machine_id"`
	MAC       string   `json:"mac"`       // eth0's
	Addrs     []string `json:"addrs"`     // eth0's IPv4 prefixes ("172.16.0.2/24")
	HostKey   string   `json:"host_key"`  // sshd's public host key, one authorized_keys line
	LinkUp    bool     `json:"link_up"`   // eth0 is administratively up
	Uptime    float64  `json:"uptime"`    // seconds since boot
	KernelRel string   `json:"kernel"`    // uname -r
	BootID    string   `json:"boot_id"`   // /proc/sys/kernel/random/boot_id
	Processes int      `json:"processes"` // live processes
}

// Limits on what a request may carry.
const (
	maxHostname = 64
	maxSeed     = 512
	maxHostKey  = 4096
	// An envd token is what the daemon makes (48 hex digits), within
	// these bounds; the environment is bounded by MaxLine.
	minEnvdToken = 16
	maxEnvdToken = 256
)

// Validate checks a request's fields for its operation; the guest runs it
// before acting, the host before sending.
func (r Request) Validate() error {
	switch r.Op {
	case OpHello, OpPowerOff:
	case OpIdentity:
		if r.Hostname != "" && !validHostname(r.Hostname) {
			return fmt.Errorf("hostname %q: want 1-%d letters, digits or '-', not starting or ending with '-'", r.Hostname, maxHostname)
		}
		if r.MachineID != "" && !validMachineID(r.MachineID) {
			return fmt.Errorf("machine id %q: want 32 lowercase hex digits, not all zero", r.MachineID)
		}
		if len(r.Seed) > maxSeed {
			return fmt.Errorf("seed of %d bytes: at most %d", len(r.Seed), maxSeed)
		}
		if r.MAC != "" {
			if hw, err := net.ParseMAC(r.MAC); err != nil || len(hw) != 6 || hw[0]&1 != 0 {
				return fmt.Errorf("mac %q: want a unicast Ethernet address", r.MAC)
			}
		}
		if r.Addr != "" {
			if p, err := netip.ParsePrefix(r.Addr); err != nil || !p.Addr().Is4() {
				return fmt.Errorf("addr %q: want an IPv4 prefix like 172.16.0.5/24", r.Addr)
			}
		}
		if r.Gateway != "" {
			if a, err := netip.ParseAddr(r.Gateway); err != nil || !a.Is4() || r.Addr == "" {
				return fmt.Errorf("gw %q: want an IPv4 address, given with addr", r.Gateway)
			}
		}
		if (len(r.HostKey) == 0) != (r.HostPub == "") || len(r.HostKey) > maxHostKey ||
			(r.HostPub != "" && (!strings.HasPrefix(r.HostPub, "ssh-ed25519 ") || strings.ContainsAny(r.HostPub, "\n\r"))) {
			return fmt.Errorf("host key: want an ed25519 private key of at most %d bytes with its one-line public half", maxHostKey)
		}
	case OpClock:
		if r.UnixNano <= 0 {
			return fmt.Errorf("clock: unix_ns must be positive, got %d", r.UnixNano)
		}
	case OpEnvd:
		if !validToken(r.EnvdToken) {
			return fmt.Errorf("envd token: want %d-%d letters, digits, '-' or '_'", minEnvdToken, maxEnvdToken)
		}
		for _, kv := range r.EnvdEnv {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsAny(kv, "\n\r\x00") {
				return fmt.Errorf("envd environment entry %q: want KEY=VALUE on one line", kv)
			}
		}
	default:
		return fmt.Errorf("unknown op %q (known: hello, identity, clock, poweroff, envd)", r.Op)
	}
	return nil
}

func validToken(s string) bool {
	if len(s) < minEnvdToken || len(s) > maxEnvdToken {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func validHostname(s string) bool {
	if len(s) == 0 || len(s) > maxHostname || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func validMachineID(s string) bool {
	if len(s) != 32 || s == "00000000000000000000000000000000" {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// NewMachineID returns a fresh random machine id.
func NewMachineID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ---- host side ----

// Client asks over one connection to the guest's port. Not safe for
// concurrent use: the protocol has one request in flight.
type Client struct {
	conn net.Conn
	br   *bufio.Reader
}

// NewClient wraps a connection its VMM driver dialed.
func NewClient(conn net.Conn) *Client {
	return &Client{conn: conn, br: bufio.NewReaderSize(conn, 4096)}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Call sends req and returns the guest's answer to it, skipping stale
// answers to earlier requests (at most maxStale lines). It gives the
// request a fresh id when it has none, bounds the whole exchange by ctx,
// and turns an answer with ok false into an error carrying the guest's
// message.
func (c *Client) Call(ctx context.Context, req Request) (Reply, error) {
	conn, br := c.conn, c.br
	if err := req.Validate(); err != nil {
		return Reply{}, err
	}
	if req.ID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		req.ID = hex.EncodeToString(b[:])
	}
	// ctx ends the exchange by making the connection's reads and writes
	// fail at once (ctx.Err is set by then, so the error names it).
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			_ = conn.SetDeadline(time.Time{})
		}
	}()
	line, err := json.Marshal(req)
	if err != nil {
		return Reply{}, err
	}
	// The leading newline ends whatever half line an earlier asker left in
	// the guest's buffer, so this request is parsed on its own.
	if _, err := conn.Write(append(append([]byte{'\n'}, line...), '\n')); err != nil {
		return Reply{}, ctxErr(ctx, fmt.Errorf("control channel: send %s: %w", req.Op, err))
	}
	for range maxStale + 1 {
		raw, err := ReadLine(br)
		if errors.Is(err, ErrLineTooLong) {
			continue
		}
		if err != nil {
			return Reply{}, ctxErr(ctx, fmt.Errorf("control channel: read the answer to %s: %w", req.Op, err))
		}
		var rep Reply
		if err := json.Unmarshal(raw, &rep); err != nil || rep.ID != req.ID {
			continue // an answer to someone else, or noise
		}
		if !rep.OK {
			return rep, fmt.Errorf("guest refused %s: %s", req.Op, clip(rep.Error, 512))
		}
		return rep, nil
	}
	return Reply{}, fmt.Errorf("control channel: no answer to %s among %d lines", req.Op, maxStale+1)
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", err, ctx.Err())
	}
	return err
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// ErrLineTooLong is ReadLine's error for a line over MaxLine bytes.
var ErrLineTooLong = errors.New("line longer than the control channel's limit")

// ReadLine reads one line of at most MaxLine bytes (newline included) and
// returns it without its newline. A longer line is consumed up to its
// newline and answered with ErrLineTooLong, so the stream stays in step.
func ReadLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > MaxLine {
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case err == nil:
			if tooLong {
				return nil, ErrLineTooLong
			}
			return bytes.TrimSuffix(line, []byte{'\n'}), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}

// ---- guest side ----

// Handler does the guest's work for one request, already validated. It
// fills the reply's fields (Serve sets ID, OK, Error and UnixNano).
// PowerOff is answered before it runs: Serve calls after(), which the
// handler returns for work that must follow the answer.
type Handler func(req Request) (rep Reply, after func(), err error)

// Serve answers requests read from rw with h until reading fails. Empty
// lines are skipped; a line that is not a request is answered with an
// error (and no id). It writes one answer per request.
func Serve(rw io.ReadWriter, h Handler, now func() time.Time) error {
	br := bufio.NewReaderSize(rw, 4096)
	for {
		raw, err := ReadLine(br)
		if errors.Is(err, ErrLineTooLong) {
			if werr := writeReply(rw, Reply{Error: err.Error()}, now); werr != nil {
				return werr
			}
			continue
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		var req Request
		var rep Reply
		var after func()
		if err := json.Unmarshal(raw, &req); err != nil {
			rep.Error = "not a request: " + err.Error()
		} else if err := req.Validate(); err != nil {
			rep.Error = err.Error()
		} else {
			var herr error
			rep, after, herr = h(req)
			if herr != nil {
				rep.Error = herr.Error()
			}
		}
		rep.ID = req.ID
		if err := writeReply(rw, rep, now); err != nil {
			return err
		}
		if after != nil {
			after()
		}
	}
}

func writeReply(w io.Writer, rep Reply, now func() time.Time) error {
	rep.OK = rep.Error == ""
	rep.UnixNano = now().UnixNano()
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if len(b)+1 > MaxLine {
		b, _ = json.Marshal(Reply{ID: rep.ID, Error: "answer longer than the control channel's limit", UnixNano: rep.UnixNano})
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
