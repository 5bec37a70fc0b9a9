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

// attachSession bridges a hijacked connection and Service.AttachSession.
//
// The 101 answer is sent lazily: as soon as AttachSession reads Stdin or
// writes output, or returns nil. An error it returns before that (not
// found, another attachment holds the session) is a plain JSON error with
// its status, so the client never sees a 101 for an attachment that did
// not happen.
func (h *handler) attachSession(w http.ResponseWriter, r *http.Request) {
	if !headerHas(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), AttachProtocol) {
		writeError(w, errdefs.Errorf(errdefs.CodeInvalid, "attach needs the headers Connection: Upgrade and Upgrade: %s", AttachProtocol))
		return
	}
	vmRef, sRef := r.PathValue("ref"), r.PathValue("s")
	// The request context ends when this handler returns or, once hijacked,
	// never by itself: a's own context ends when the client goes away.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	a := &attachment{w: w, cancel: cancel}
	pr, pw := io.Pipe()
	a.stdinW = pw
	aio := AttachIO{
		Stdin:  &attachStdin{a: a, r: pr},
		Stdout: &attachOut{a: a, typ: AttachStdout},
		Stderr: &attachOut{a: a, typ: AttachStderr},
	}
	// Before the upgrade, the client's disconnect must still end the work.
	stopEarly := context.AfterFunc(r.Context(), func() {
		if !a.isUpgraded() {
			cancel()
		}
	})
	err := h.svc.AttachSession(ctx, vmRef, sRef, aio)
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
		// The session's record has the exit code of what just ended.
		if ss, gerr := h.svc.GetSession(ctx, vmRef, sRef); gerr == nil && ss.ExitCode != nil {
			end.ExitCode = *ss.ExitCode
		}
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
	w      http.ResponseWriter
	cancel context.CancelFunc
	stdinW *io.PipeWriter

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

// readFrames feeds stdin frames to the pipe until detach or disconnect;
// either one ends Stdin with EOF. A vanished client also cancels the
// attachment's context.
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
			if _, err := a.stdinW.Write(payload); err != nil {
				return // AttachSession returned and closed the pipe
			}
		case AttachDetach:
			a.mu.Lock()
			a.detached = true
			a.mu.Unlock()
			a.stdinW.Close()
			// Keep reading so that a closed connection is noticed; further
			// stdin is dropped by the closed pipe.
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
