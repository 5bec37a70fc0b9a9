package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/version"
)

// ErrDaemonUnreachable is matched (errors.Is) by every client error that
// comes from failing to connect to the daemon's socket: the daemon is not
// running, or the socket is stale. The CLI starts the daemon on it.
var ErrDaemonUnreachable = errors.New("daemon not reachable")

// UnreachableError says which socket could not be reached and why.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("daemon not reachable on %s: %v", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() []error { return []error{ErrDaemonUnreachable, e.Err} }

// Client calls bangerd's API on its unix socket. API errors are *errdefs.Error
// values; connection failures match ErrDaemonUnreachable.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", socket)
			if err != nil {
				return nil, &UnreachableError{Socket: socket, Err: err}
			}
			return c, nil
		},
		MaxIdleConns:      4,
		DisableKeepAlives: false,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket is the socket the client dials.
func (c *Client) Socket() string { return c.socket }

// esc escapes one path segment.
func esc(s string) string { return url.PathEscape(s) }

func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body io.Reader) (*http.Request, error) {
	u := "http://bangerd" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	return http.NewRequestWithContext(ctx, method, u, body)
}

func jsonBody(v any) (io.Reader, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return bytes.NewReader(b), nil
}

// do sends a request and returns the response when its status is 2xx or
// 101, else the API error it carries.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body io.Reader, hdr http.Header) (*http.Response, error) {
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *UnreachableError
		if errors.As(err, &ue) {
			return nil, ue
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, readError(resp)
}

// readError decodes an error response; a body that is not an API error
// becomes an internal error quoting it.
func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e errdefs.Error
	if json.Unmarshal(b, &e) == nil && e.Code != "" {
		return &e
	}
	return &errdefs.Error{Code: errdefs.CodeInternal, Message: fmt.Sprintf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(b)))}
}

// send sends in (may be nil) as the JSON body and returns the response as
// do does.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, in any) (*http.Response, error) {
	body, err := jsonBody(in)
	if err != nil {
		return nil, err
	}
	return c.do(ctx, method, path, query, body, nil)
}

// decodeAnswer decodes a JSON answer into out; what names the request in
// the error.
func decodeAnswer(r io.Reader, what string, out any) error {
	if err := json.NewDecoder(r).Decode(out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", what, err)
	}
	return nil
}

// call sends a JSON request (in may be nil) and decodes a JSON answer into
// out (may be nil).
func (c *Client) call(ctx context.Context, method, path string, query url.Values, in, out any) error {
	resp, err := c.send(ctx, method, path, query, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return decodeAnswer(resp.Body, method+" "+path, out)
}

// callFor is call for an answer of type T.
func callFor[T any](ctx context.Context, c *Client, method, path string, in any) (T, error) {
	var v T
	return v, c.call(ctx, method, path, nil, in, &v)
}

// streamFor is stream for a result of type T.
func streamFor[T any](ctx context.Context, c *Client, method, path string, in any, report progress.Func) (T, error) {
	var v T
	return v, c.stream(ctx, method, path, in, report, &v)
}

// frames reads an NDJSON stream, calling fn for each frame until fn says
// it was the last or the stream ends.
func frames(r io.Reader, fn func(f Frame, raw json.RawMessage) (last bool, err error)) error {
	dec := json.NewDecoder(r)
	for {
		var raw struct {
			Frame
			Result json.RawMessage `json:"result,omitempty"`
		}
		if err := dec.Decode(&raw); err != nil {
			if err == io.EOF {
				return errors.New("the daemon ended the stream without a result (did it stop?)")
			}
			return fmt.Errorf("read stream: %w", err)
		}
		last, err := fn(raw.Frame, raw.Result)
		if err != nil || last {
			return err
		}
	}
}

// frameError is the error an error frame carries.
func frameError(f Frame) error {
	if f.Error == nil {
		return &errdefs.Error{Code: errdefs.CodeInternal, Message: "error frame without an error"}
	}
	return f.Error
}

// stream sends a request whose answer is a progress stream, and decodes
// its result into out.
func (c *Client) stream(ctx context.Context, method, path string, in any, report progress.Func, out any) error {
	resp, err := c.send(ctx, method, path, nil, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return frames(resp.Body, func(f Frame, result json.RawMessage) (bool, error) {
		switch f.Type {
		case FrameProgress:
			if report != nil && f.Progress != nil {
				report(*f.Progress)
			}
			return false, nil
		case FrameResult:
			if out != nil {
				if err := json.Unmarshal(result, out); err != nil {
					return true, fmt.Errorf("decode result: %w", err)
				}
			}
			return true, nil
		case FrameError:
			return true, frameError(f)
		default:
			return false, nil // unknown frames are for newer clients
		}
	})
}

// raw sends a request whose answer is raw bytes copied to w; an error the
// daemon met after sending bytes arrives in the TrailerError trailer.
func (c *Client) raw(ctx context.Context, method, path string, query url.Values, in any, w io.Writer) error {
	resp, err := c.send(ctx, method, path, query, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return err
	}
	if t := resp.Trailer.Get(TrailerError); t != "" {
		code, msg, ok := strings.Cut(t, ": ")
		if !ok {
			code, msg = errdefs.CodeInternal, t
		}
		return &errdefs.Error{Code: code, Message: msg}
	}
	return nil
}

// ---- daemon ----

// Version returns the daemon's version.
func (c *Client) Version(ctx context.Context) (version.Info, error) {
	return callFor[version.Info](ctx, c, "GET", "/v1/version", nil)
}

// Health returns nil when the daemon answers.
func (c *Client) Health(ctx context.Context) error {
	var v Health
	err := c.call(ctx, "GET", "/v1/health", nil, nil, &v)
	// A daemon that dies with the connection still in its listen backlog
	// drops it unanswered. For a health check (it changes nothing) that is
	// a daemon not reachable, like a refused connection.
	// net/http reports a close that races its request write as "server
	// closed idle connection", an unexported error matched only by text.
	if err != nil && !errors.Is(err, ErrDaemonUnreachable) &&
		(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
			strings.Contains(err.Error(), "server closed idle connection")) {
		return &UnreachableError{Socket: c.socket, Err: err}
	}
	return err
}

// Info describes the running daemon.
func (c *Client) Info(ctx context.Context) (DaemonInfo, error) {
	return callFor[DaemonInfo](ctx, c, "GET", "/v1/info", nil)
}

// Doctor returns the host's capabilities and the daemon's choices.
func (c *Client) Doctor(ctx context.Context) (DoctorReport, error) {
	return callFor[DoctorReport](ctx, c, "GET", "/v1/doctor", nil)
}

// ---- images ----

// ListImages lists images by name.
func (c *Client) ListImages(ctx context.Context) ([]model.Image, error) {
	return callFor[[]model.Image](ctx, c, "GET", "/v1/images", nil)
}

// GetImage returns one image by ref.
func (c *Client) GetImage(ctx context.Context, ref string) (model.Image, error) {
	return callFor[model.Image](ctx, c, "GET", "/v1/images/"+esc(ref), nil)
}

// BuildImage builds an image, reporting progress.
func (c *Client) BuildImage(ctx context.Context, req BuildImageRequest, report progress.Func) (model.Image, error) {
	return streamFor[model.Image](ctx, c, "POST", "/v1/images/build", req, report)
}

// ImportImage registers an existing ext4 file, reporting progress.
func (c *Client) ImportImage(ctx context.Context, req ImportImageRequest, report progress.Func) (model.Image, error) {
	return streamFor[model.Image](ctx, c, "POST", "/v1/images/import", req, report)
}

// RemoveImage removes an image.
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	return c.call(ctx, "DELETE", "/v1/images/"+esc(ref), nil, nil, nil)
}

// ---- kernels ----

// ListKernels lists catalog entries and installed kernels.
func (c *Client) ListKernels(ctx context.Context) ([]KernelEntry, error) {
	return callFor[[]KernelEntry](ctx, c, "GET", "/v1/kernels", nil)
}

// GetKernel returns one installed kernel by ref.
func (c *Client) GetKernel(ctx context.Context, ref string) (model.Kernel, error) {
	return callFor[model.Kernel](ctx, c, "GET", "/v1/kernels/"+esc(ref), nil)
}

// PullKernel installs a catalog kernel, reporting progress.
func (c *Client) PullKernel(ctx context.Context, name string, report progress.Func) (model.Kernel, error) {
	return streamFor[model.Kernel](ctx, c, "POST", "/v1/kernels/"+esc(name)+"/pull", nil, report)
}

// ImportKernel registers the user's kernel files.
func (c *Client) ImportKernel(ctx context.Context, req ImportKernelRequest) (model.Kernel, error) {
	return callFor[model.Kernel](ctx, c, "POST", "/v1/kernels/import", req)
}

// RemoveKernel removes an installed kernel.
func (c *Client) RemoveKernel(ctx context.Context, ref string) error {
	return c.call(ctx, "DELETE", "/v1/kernels/"+esc(ref), nil, nil, nil)
}

// ---- VMs ----

// ListVMs lists VMs, oldest first.
func (c *Client) ListVMs(ctx context.Context) ([]model.VM, error) {
	return callFor[[]model.VM](ctx, c, "GET", "/v1/vms", nil)
}

// ListVMsByLabel lists the VMs whose labels sel matches, oldest first.
func (c *Client) ListVMsByLabel(ctx context.Context, sel model.LabelSelector) ([]model.VM, error) {
	q := url.Values{"label": sel.Terms()}
	return callFor[[]model.VM](ctx, c, "GET", "/v1/vms?"+q.Encode(), nil)
}

// GetVM returns one VM by ref.
func (c *Client) GetVM(ctx context.Context, ref string) (model.VM, error) {
	return callFor[model.VM](ctx, c, "GET", "/v1/vms/"+esc(ref), nil)
}

// CreateVM creates (and with req.Start, boots) a VM, reporting progress.
func (c *Client) CreateVM(ctx context.Context, req CreateVMRequest, report progress.Func) (model.VM, error) {
	return streamFor[model.VM](ctx, c, "POST", "/v1/vms", req, report)
}

// StartVM boots a VM, reporting progress.
func (c *Client) StartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	return streamFor[model.VM](ctx, c, "POST", "/v1/vms/"+esc(ref)+"/start", nil, report)
}

// StopVM stops a VM.
func (c *Client) StopVM(ctx context.Context, ref string, req StopVMRequest) (model.VM, error) {
	return callFor[model.VM](ctx, c, "POST", "/v1/vms/"+esc(ref)+"/stop", req)
}

// RestartVM stops and boots a VM, reporting progress.
func (c *Client) RestartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	return streamFor[model.VM](ctx, c, "POST", "/v1/vms/"+esc(ref)+"/restart", nil, report)
}

// PauseVM saves a running VM's state to disk and ends its VMM.
func (c *Client) PauseVM(ctx context.Context, ref string) (model.VM, error) {
	return callFor[model.VM](ctx, c, "POST", "/v1/vms/"+esc(ref)+"/pause", nil)
}

// ResumeVM restores a paused VM, reporting progress.
func (c *Client) ResumeVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	return streamFor[model.VM](ctx, c, "POST", "/v1/vms/"+esc(ref)+"/resume", nil, report)
}

// CreateSnapshot takes a snapshot of a running or paused VM.
func (c *Client) CreateSnapshot(ctx context.Context, vmRef string, req CreateSnapshotRequest) (model.Snapshot, error) {
	return callFor[model.Snapshot](ctx, c, "POST", "/v1/vms/"+esc(vmRef)+"/snapshots", req)
}

// ListSnapshots lists every snapshot.
func (c *Client) ListSnapshots(ctx context.Context) ([]model.Snapshot, error) {
	return callFor[[]model.Snapshot](ctx, c, "GET", "/v1/snapshots", nil)
}

// GetSnapshot finds a snapshot by name, id or id prefix.
func (c *Client) GetSnapshot(ctx context.Context, ref string) (model.Snapshot, error) {
	return callFor[model.Snapshot](ctx, c, "GET", "/v1/snapshots/"+esc(ref), nil)
}

// RemoveSnapshot deletes a snapshot no VM was made from.
func (c *Client) RemoveSnapshot(ctx context.Context, ref string) error {
	return c.call(ctx, "DELETE", "/v1/snapshots/"+esc(ref), nil, nil, nil)
}

// WarmImage makes (or finds fresh) the warm-start template of a VM
// shape, reporting progress.
func (c *Client) WarmImage(ctx context.Context, req WarmRequest, report progress.Func) (model.Snapshot, error) {
	return streamFor[model.Snapshot](ctx, c, "POST", "/v1/templates", req, report)
}

// ListTemplates lists the warm-start templates.
func (c *Client) ListTemplates(ctx context.Context) ([]model.Snapshot, error) {
	return callFor[[]model.Snapshot](ctx, c, "GET", "/v1/templates", nil)
}

// RemoveTemplate deletes a warm-start template no VM was made from.
func (c *Client) RemoveTemplate(ctx context.Context, ref string) error {
	return c.call(ctx, "DELETE", "/v1/templates/"+esc(ref), nil, nil, nil)
}

// Fork makes VMs that resume from a snapshot, reporting progress.
func (c *Client) Fork(ctx context.Context, req ForkRequest, report progress.Func) ([]model.VM, error) {
	return streamFor[[]model.VM](ctx, c, "POST", "/v1/fork", req, report)
}

// DeleteVM deletes a VM; force stops it first if it runs.
func (c *Client) DeleteVM(ctx context.Context, ref string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.call(ctx, "DELETE", "/v1/vms/"+esc(ref), q, nil, nil)
}

// SetVMNet changes a VM's network policy.
func (c *Client) SetVMNet(ctx context.Context, ref string, req VMNetRequest) (model.VM, error) {
	return callFor[model.VM](ctx, c, "PUT", "/v1/vms/"+esc(ref)+"/net", req)
}

// SetVMTTL sets, extends or clears a VM's deadline.
func (c *Client) SetVMTTL(ctx context.Context, ref string, req VMTTLRequest) (model.VM, error) {
	return callFor[model.VM](ctx, c, "PUT", "/v1/vms/"+esc(ref)+"/ttl", req)
}

// AddPort publishes a port of a running VM.
func (c *Client) AddPort(ctx context.Context, ref string, req AddPortRequest) (model.Forward, error) {
	return callFor[model.Forward](ctx, c, "POST", "/v1/vms/"+esc(ref)+"/ports", req)
}

// RemovePort unpublishes a VM's port (HOSTPORT or HOSTADDR:HOSTPORT).
func (c *Client) RemovePort(ctx context.Context, ref, port string) error {
	return c.call(ctx, "DELETE", "/v1/vms/"+esc(ref)+"/ports/"+esc(port), nil, nil, nil)
}

// ListPorts lists a VM's published ports.
func (c *Client) ListPorts(ctx context.Context, ref string) ([]model.Forward, error) {
	return callFor[[]model.Forward](ctx, c, "GET", "/v1/vms/"+esc(ref)+"/ports", nil)
}

// VMLogs copies a VM's logs to w (until ctx ends when following).
func (c *Client) VMLogs(ctx context.Context, ref string, req LogsRequest, w io.Writer) error {
	q := logsQuery(req.Tail, req.Follow)
	if req.Source != "" {
		q.Set("source", req.Source)
	}
	return c.raw(ctx, "GET", "/v1/vms/"+esc(ref)+"/logs", q, nil, w)
}

// ExecVM runs a command in a VM, copying its output to stdout and stderr,
// and returns its exit code.
func (c *Client) ExecVM(ctx context.Context, ref string, req ExecRequest, stdout, stderr io.Writer) (int, error) {
	resp, err := c.send(ctx, "POST", "/v1/vms/"+esc(ref)+"/exec", nil, req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	code := 0
	err = frames(resp.Body, func(f Frame, _ json.RawMessage) (bool, error) {
		switch f.Type {
		case FrameStdout:
			_, err := stdout.Write(f.Data)
			return false, err
		case FrameStderr:
			_, err := stderr.Write(f.Data)
			return false, err
		case FrameExit:
			if f.ExitCode != nil {
				code = *f.ExitCode
			}
			return true, nil
		case FrameError:
			return true, frameError(f)
		}
		return false, nil
	})
	return code, err
}

// SSHInfo returns what the CLI needs to exec ssh into a VM.
func (c *Client) SSHInfo(ctx context.Context, ref string) (SSHInfo, error) {
	return callFor[SSHInfo](ctx, c, "GET", "/v1/vms/"+esc(ref)+"/ssh", nil)
}

// Hosts returns /etc/hosts lines for the running VMs.
func (c *Client) Hosts(ctx context.Context) (string, error) {
	var b strings.Builder
	err := c.raw(ctx, "GET", "/v1/hosts", nil, nil, &b)
	return b.String(), err
}

// ---- workspaces ----

// PrepareWorkspace sends a tar stream of a repository into a VM.
func (c *Client) PrepareWorkspace(ctx context.Context, ref string, req WorkspaceRequest, tar io.Reader) (WorkspaceInfo, error) {
	opts, err := json.Marshal(req)
	if err != nil {
		return WorkspaceInfo{}, err
	}
	hdr := http.Header{}
	hdr.Set(HeaderOptions, string(opts))
	hdr.Set("Content-Type", "application/x-tar")
	resp, err := c.do(ctx, "POST", "/v1/vms/"+esc(ref)+"/workspace/prepare", nil, tar, hdr)
	if err != nil {
		return WorkspaceInfo{}, err
	}
	defer resp.Body.Close()
	var v WorkspaceInfo
	return v, decodeAnswer(resp.Body, "workspace prepare", &v)
}

// ExportWorkspace copies the guest repository's changes (a bundle or a
// patch) to w.
func (c *Client) ExportWorkspace(ctx context.Context, ref string, req ExportRequest, w io.Writer) error {
	return c.raw(ctx, "POST", "/v1/vms/"+esc(ref)+"/workspace/export", nil, req, w)
}

// ---- sessions ----

func sessionPath(vm, s string) string { return "/v1/vms/" + esc(vm) + "/sessions/" + esc(s) }

// ListSessions lists a VM's sessions.
func (c *Client) ListSessions(ctx context.Context, vmRef string) ([]model.Session, error) {
	return callFor[[]model.Session](ctx, c, "GET", "/v1/vms/"+esc(vmRef)+"/sessions", nil)
}

// GetSession returns one session.
func (c *Client) GetSession(ctx context.Context, vmRef, ref string) (model.Session, error) {
	return callFor[model.Session](ctx, c, "GET", sessionPath(vmRef, ref), nil)
}

// StartSession starts a guest session.
func (c *Client) StartSession(ctx context.Context, vmRef string, req StartSessionRequest) (model.Session, error) {
	return callFor[model.Session](ctx, c, "POST", "/v1/vms/"+esc(vmRef)+"/sessions", req)
}

// logsQuery is the query of a logs request's tail and follow.
func logsQuery(tail int, follow bool) url.Values {
	q := url.Values{}
	if tail > 0 {
		q.Set("tail", strconv.Itoa(tail))
	}
	if follow {
		q.Set("follow", "true")
	}
	return q
}

// SessionLogs copies a session's stdout (or stderr) to w.
func (c *Client) SessionLogs(ctx context.Context, vmRef, ref string, req SessionLogsRequest, w io.Writer) error {
	q := logsQuery(req.Tail, req.Follow)
	if req.Stderr {
		q.Set("stderr", "true")
	}
	return c.raw(ctx, "GET", sessionPath(vmRef, ref)+"/logs", q, nil, w)
}

// SendSession writes data to a session's stdin and returns the byte count.
func (c *Client) SendSession(ctx context.Context, vmRef, ref string, data io.Reader) (int64, error) {
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	resp, err := c.do(ctx, "POST", sessionPath(vmRef, ref)+"/send", nil, data, hdr)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v SendResult
	if err := decodeAnswer(resp.Body, "session send", &v); err != nil {
		return 0, err
	}
	return v.Bytes, nil
}

// StopSession stops a session gracefully.
func (c *Client) StopSession(ctx context.Context, vmRef, ref string, req StopSessionRequest) (model.Session, error) {
	return callFor[model.Session](ctx, c, "POST", sessionPath(vmRef, ref)+"/stop", req)
}

// KillSession sends a signal (default KILL) to a session.
func (c *Client) KillSession(ctx context.Context, vmRef, ref, signal string) (model.Session, error) {
	return callFor[model.Session](ctx, c, "POST", sessionPath(vmRef, ref)+"/kill", KillSessionRequest{Signal: signal})
}

// RemoveSession removes a finished session's record.
func (c *Client) RemoveSession(ctx context.Context, vmRef, ref string) error {
	return c.call(ctx, "DELETE", sessionPath(vmRef, ref), nil, nil, nil)
}

// AttachSession attaches to a session. Errors before the attachment (not
// found, already attached) are *errdefs.Error values.
func (c *Client) AttachSession(ctx context.Context, vmRef, ref string, req AttachRequest) (*AttachStream, error) {
	var q url.Values
	if req.From != "" {
		q = url.Values{"from": {req.From}}
	}
	return c.upgrade(ctx, sessionPath(vmRef, ref)+"/attach", q, nil)
}

// ExecVMAttached runs a command in a VM with its stdin (and, with
// req.TTY, its terminal) streamed: Write sends stdin, CloseStdin ends it,
// Resize changes the terminal's size, Receive copies the output and
// returns the exit code in the end frame. Errors before the command
// started (VM not running, bad request) are *errdefs.Error values.
func (c *Client) ExecVMAttached(ctx context.Context, ref string, req ExecRequest) (*AttachStream, error) {
	return c.upgrade(ctx, "/v1/vms/"+esc(ref)+"/exec", nil, req)
}

// upgrade sends a POST (with in as its JSON body when not nil) asking for
// the attach framing and returns the stream of the upgraded connection.
func (c *Client) upgrade(ctx context.Context, path string, q url.Values, in any) (*AttachStream, error) {
	body, err := jsonBody(in)
	if err != nil {
		return nil, err
	}
	hdr := http.Header{}
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Upgrade", AttachProtocol)
	resp, err := c.do(ctx, "POST", path, q, body, hdr)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		return nil, &errdefs.Error{Code: errdefs.CodeInternal, Message: "daemon did not upgrade the request: " + resp.Status}
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, &errdefs.Error{Code: errdefs.CodeInternal, Message: "attach connection is not writable"}
	}
	return &AttachStream{rwc: rwc, r: bufio.NewReader(rwc)}, nil
}

// AttachStream is the client side of an attachment: Write sends stdin,
// Detach leaves the session running, Receive copies output until the end.
type AttachStream struct {
	rwc io.ReadWriteCloser
	r   *bufio.Reader
	mu  sync.Mutex // serialises frame writes
}

// Write sends p to the session's stdin.
func (a *AttachStream) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := WriteAttachFrame(a.rwc, AttachStdin, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Detach asks the daemon to end the attachment, leaving the session
// running; Receive then returns with reason "detached".
func (a *AttachStream) Detach() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return WriteAttachFrame(a.rwc, AttachDetach, nil)
}

// CloseStdin ends the input: an exec's command reads end-of-file (a
// terminal has none, so it sees nothing); a session attachment detaches.
func (a *AttachStream) CloseStdin() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return WriteAttachFrame(a.rwc, AttachStdinEOF, nil)
}

// Resize tells the daemon the client's terminal has a new size.
func (a *AttachStream) Resize(ws WindowSize) error {
	p, err := json.Marshal(ws)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return WriteAttachFrame(a.rwc, AttachResize, p)
}

// Receive copies the session's output to stdout and stderr until the
// daemon ends the attachment, and returns how it ended. An error the
// daemon reported in the end frame is returned as an *errdefs.Error too.
func (a *AttachStream) Receive(stdout, stderr io.Writer) (AttachEndInfo, error) {
	for {
		typ, p, err := ReadAttachFrame(a.r)
		if err != nil {
			if err == io.EOF {
				err = errors.New("the daemon closed the attachment without saying why (did it stop?)")
			}
			return AttachEndInfo{}, err
		}
		switch typ {
		case AttachStdout:
			if _, err := stdout.Write(p); err != nil {
				return AttachEndInfo{}, err
			}
		case AttachStderr:
			if _, err := stderr.Write(p); err != nil {
				return AttachEndInfo{}, err
			}
		case AttachEnd:
			var end AttachEndInfo
			if err := json.Unmarshal(p, &end); err != nil {
				return end, fmt.Errorf("attach end frame: %w", err)
			}
			if end.Error != "" {
				code := end.Code
				if code == "" {
					code = errdefs.CodeInternal
				}
				return end, &errdefs.Error{Code: code, Message: end.Error}
			}
			return end, nil
		}
	}
}

// Close closes the connection.
func (a *AttachStream) Close() error { return a.rwc.Close() }
