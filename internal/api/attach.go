package api

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/banger/banger/internal/errdefs"
)

// attachSession serves a session attachment over the attach framing.
func (h *handler) attachSession(w http.ResponseWriter, r *http.Request) {
	vmRef, sRef := r.PathValue("ref"), r.PathValue("s")
	req := AttachRequest{From: r.URL.Query().Get("from")}
	h.serveAttached(w, r, true,
		func(ctx context.Context, aio AttachIO) error {
			return h.svc.AttachSession(ctx, vmRef, sRef, req, aio)
		},
		func(ctx context.Context) int {
			// The session's record has the exit code of what just ended.
			if ss, err := h.svc.GetSession(ctx, vmRef, sRef); err == nil && ss.ExitCode != nil {
				return *ss.ExitCode
			}
			return 0
		})
}

// execAttached serves an exec whose stdin (and terminal) the client
// streams, over the attach framing; the end frame carries the exit code.
func (h *handler) execAttached(w http.ResponseWriter, r *http.Request, req ExecRequest) {
	code := 0
	h.serveAttached(w, r, false,
		func(ctx context.Context, aio AttachIO) error {
			var err error
			code, err = h.svc.ExecVMAttached(ctx, r.PathValue("ref"), req, aio)
			return err
		},
		func(context.Context) int { return code })
}

// isUpgrade reports whether r asks for the attach framing.
func isUpgrade(r *http.Request) bool {
	return headerHas(r.Header, "Connection", "upgrade") && strings.EqualFold(r.Header.Get("Upgrade"), AttachProtocol)
}

// serveAttached bridges a hijacked connection and run.
//
// The 101 answer is sent lazily: as soon as run reads Stdin or writes
// output, or returns nil. An error it returns before that (not found,
// another attachment holds the session, the VM is not running) is a plain
// JSON error with its status, so the client never sees a 101 for an
// attachment that did not happen. With session, a detach or end-of-input
// frame ends the attachment as "detached"; otherwise (an exec) both only
// end Stdin. exitCode gives the code for the end frame of a run that ended
// by itself.
func (h *handler) serveAttached(w http.ResponseWriter, r *http.Request, session bool, run func(context.Context, AttachIO) error, exitCode func(context.Context) int) {
	if !isUpgrade(r) {
		writeError(w, errdefs.Errorf(errdefs.CodeInvalid, "attach needs the headers Connection: Upgrade and Upgrade: %s", AttachProtocol))
		return
	}
	// The request context ends when this handler returns or, once hijacked,
	// never by itself: a's own context ends when the client goes away.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	a := &attachment{w: w, cancel: cancel, session: session, resize: make(chan WindowSize, 1)}
	pr, pw := io.Pipe()
	a.stdinW = pw
	aio := AttachIO{
		Stdin:  &attachStdin{a: a, r: pr},
		Stdout: &attachOut{a: a, typ: AttachStdout},
		Stderr: &attachOut{a: a, typ: AttachStderr},
		Resize: a.resize,
	}
	// Before the upgrade, the client's disconnect must still end the work.
	stopEarly := context.AfterFunc(r.Context(), func() {
		if !a.isUpgraded() {
			cancel()
		}
	})
	err := run(ctx, aio)
	stopEarly()
	pr.Close() // unblocks the frame reader if it is writing stdin
	if !a.isUpgraded() {
		if err != nil {
			writeError(w, err)
			return
		}
		if uerr := a.upgrade(); uerr != nil {
			h.log.Warn("attach upgrade failed", "err", uerr)
			return
		}
	}
	end := AttachEndInfo{Reason: AttachExited}
	if a.wasDetached() {
		end.Reason = AttachDetached
	}
	if err != nil {
		e := asError(err)
		end.Error, end.Code = e.Message, e.Code
	} else if end.Reason == AttachExited {
		end.ExitCode = exitCode(ctx)
	}
	payload, _ := json.Marshal(end)
	a.writeFrame(AttachEnd, payload)
	a.close()
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// attachment is the server side of one attach connection.
type attachment struct {
	w       http.ResponseWriter
	cancel  context.CancelFunc
	stdinW  *io.PipeWriter
	session bool            // a session attachment: end of input detaches
	resize  chan WindowSize // capacity 1: the latest size not yet taken

	mu       sync.Mutex // guards the fields below and serialises frame writes
	upgraded bool
	upErr    error
	conn     net.Conn
	bw       *bufio.ReadWriter
	detached bool
	closed   bool
}

func (a *attachment) isUpgraded() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.upgraded
}

func (a *attachment) wasDetached() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.detached
}

// upgrade answers 101, takes over the connection and starts reading the
// client's frames. It runs once; later calls return the first result.
func (a *attachment) upgrade() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.upgraded {
		return a.upErr
	}
	a.upgraded = true
	conn, bw, err := http.NewResponseController(a.w).Hijack()
	if err != nil {
		a.upErr = err
		a.stdinW.CloseWithError(err)
		return err
	}
	a.conn, a.bw = conn, bw
	_, err = bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + AttachProtocol + "\r\n\r\n")
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		a.upErr = err
		a.stdinW.CloseWithError(err)
		conn.Close()
		return err
	}
	go a.readFrames(bw.Reader)
	return nil
}

// readFrames feeds stdin frames to the pipe and resize frames to the
// resize channel until detach or disconnect; either one ends Stdin with
// EOF. A vanished client also cancels the attachment's context.
func (a *attachment) readFrames(r io.Reader) {
	for {
		typ, payload, err := ReadAttachFrame(r)
		if err != nil {
			a.mu.Lock()
			a.detached = true // the client is gone: it did not wait for an exit
			a.mu.Unlock()
			a.stdinW.Close()
			a.cancel()
			return
		}
		switch typ {
		case AttachStdin:
			// A write after the end of input (or after run returned) fails
			// on the closed pipe and is dropped; keep reading, so that a
			// closed connection or a resize is still noticed.
			_, _ = a.stdinW.Write(payload)
		case AttachResize:
			if ws, err := ParseWindowSize(payload); err == nil {
				a.setSize(ws)
			}
		case AttachDetach, AttachStdinEOF:
			if a.session {
				a.mu.Lock()
				a.detached = true
				a.mu.Unlock()
			}
			a.stdinW.Close()
		}
	}
}

// setSize offers ws, replacing a size not yet taken.
func (a *attachment) setSize(ws WindowSize) {
	for {
		select {
		case a.resize <- ws:
			return
		default:
		}
		select {
		case <-a.resize:
		default:
		}
	}
}

func (a *attachment) writeFrame(typ byte, p []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.bw == nil {
		return io.ErrClosedPipe
	}
	if err := WriteAttachFrame(a.bw, typ, p); err != nil {
		return err
	}
	return a.bw.Flush()
}

func (a *attachment) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	if a.conn != nil {
		a.conn.Close()
	}
}

// attachStdin upgrades on first read, then reads the client's stdin.
type attachStdin struct {
	a *attachment
	r *io.PipeReader
}

func (s *attachStdin) Read(p []byte) (int, error) {
	if err := s.a.upgrade(); err != nil {
		return 0, err
	}
	return s.r.Read(p)
}

// attachOut upgrades on first write, then sends output frames.
type attachOut struct {
	a   *attachment
	typ byte
}

func (o *attachOut) Write(p []byte) (int, error) {
	if err := o.a.upgrade(); err != nil {
		return 0, err
	}
	if err := o.a.writeFrame(o.typ, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
