package api

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/progress"
)

// Wire details shared by the handler and the client.
const (
	// ContentTypeNDJSON is the type of streamed responses: one Frame per
	// line.
	ContentTypeNDJSON = "application/x-ndjson"
	// HeaderOptions carries a request's JSON options when the body is
	// something else (the workspace tar stream).
	HeaderOptions = "X-Banger-Options"
	// TrailerError is set (as an HTTP trailer) on raw streamed responses
	// (logs, workspace export) when the work failed after bytes were sent.
	TrailerError = "X-Banger-Error"
	// AttachProtocol is the Upgrade token of a session attachment.
	AttachProtocol = "banger-attach"
	// DialProtocol is the Upgrade token of a connection to a guest port
	// (POST /v1/vms/{ref}/dial?port=N): after the 101 the connection
	// carries the TCP stream's bytes both ways, half-closes included.
	DialProtocol = "banger-tcp"
)

// Frame types of an NDJSON stream.
const (
	FrameProgress = "progress" // Progress is set
	FrameResult   = "result"   // Result is set; the last frame
	FrameError    = "error"    // Error is set; the last frame
	FrameStdout   = "stdout"   // Data is set (exec)
	FrameStderr   = "stderr"   // Data is set (exec)
	FrameExit     = "exit"     // ExitCode is set; the last frame (exec)
)

// Frame is one line of an NDJSON stream: progress of long work then its
// result or error, or the output then the exit code of a command.
type Frame struct {
	Type     string          `json:"type"`
	Progress *progress.Event `json:"progress,omitempty"`
	Result   any             `json:"result,omitempty"` // decoded by the client into the expected type
	Error    *errdefs.Error  `json:"error,omitempty"`
	Data     []byte          `json:"data,omitempty"` // base64 in JSON
	ExitCode *int            `json:"exit_code,omitempty"`
}

// Health is the answer of GET /v1/health.
type Health struct {
	Status string `json:"status"` // "ok"
}

// KillSessionRequest is the body of POST .../sessions/{s}/kill.
type KillSessionRequest struct {
	Signal string `json:"signal,omitempty"` // default KILL
}

// SendResult is the answer of POST .../sessions/{s}/send.
type SendResult struct {
	Bytes int64 `json:"bytes"`
}

// Attach frame types: a byte of type, a 4-byte big-endian payload length,
// then the payload. The same framing carries a session attachment
// (POST .../sessions/{s}/attach) and an interactive exec (POST
// .../exec with the Upgrade header): stdin, resize and end-of-input frames
// from the client; output frames and one end frame from the daemon.
const (
	AttachStdin    byte = 'i' // client → daemon: bytes for the stdin (or terminal)
	AttachDetach   byte = 'd' // client → daemon: leave the session running
	AttachResize   byte = 'r' // client → daemon: WindowSize JSON: the terminal's new size
	AttachStdinEOF byte = 'c' // client → daemon: no more stdin (an exec's command reads EOF; a session attachment detaches)
	AttachStdout   byte = 'o' // daemon → client: stdout (all of a terminal's output)
	AttachStderr   byte = 'e' // daemon → client: stderr
	AttachEnd      byte = 'x' // daemon → client: AttachEndInfo JSON; the last frame
)

// WindowSize is a terminal's size in character cells.
type WindowSize struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// MaxWindowSide bounds each side of a WindowSize.
const MaxWindowSide = 10000

// Valid reports whether both sides are within 1..MaxWindowSide.
func (w WindowSize) Valid() bool {
	return w.Cols >= 1 && w.Rows >= 1 && w.Cols <= MaxWindowSide && w.Rows <= MaxWindowSide
}

// ParseWindowSize decodes a resize frame's payload.
func ParseWindowSize(p []byte) (WindowSize, error) {
	var w WindowSize
	if err := json.Unmarshal(p, &w); err != nil {
		return w, fmt.Errorf("resize frame: %w", err)
	}
	if !w.Valid() {
		return w, fmt.Errorf("resize frame: size %dx%d is outside 1..%d", w.Cols, w.Rows, MaxWindowSide)
	}
	return w, nil
}

// MaxAttachFrame bounds a frame's payload so that a corrupt length cannot
// make either side allocate without limit.
const MaxAttachFrame = 1 << 20

// Reasons an attachment ended.
const (
	AttachDetached = "detached"
	AttachExited   = "exited"
)

// AttachEndInfo is the payload of the AttachEnd frame.
type AttachEndInfo struct {
	Reason   string `json:"reason"` // AttachDetached or AttachExited (an exec always ends exited)
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error"`
	Code     string `json:"code,omitempty"` // error code when Error is set
}

// WriteAttachFrame writes one frame; payloads above MaxAttachFrame are
// split into several frames of the same type.
func WriteAttachFrame(w io.Writer, typ byte, payload []byte) error {
	for {
		n := min(len(payload), MaxAttachFrame)
		var hdr [5]byte
		hdr[0] = typ
		binary.BigEndian.PutUint32(hdr[1:], uint32(n))
		// One Write per frame keeps frames whole on a shared connection
		// when the caller serialises writers.
		buf := make([]byte, 0, 5+n)
		buf = append(append(buf, hdr[:]...), payload[:n]...)
		if _, err := w.Write(buf); err != nil {
			return err
		}
		payload = payload[n:]
		if len(payload) == 0 {
			return nil
		}
	}
}

// ReadAttachFrame reads one frame. It returns io.EOF only at a clean frame
// boundary, and an error for a frame longer than MaxAttachFrame.
func ReadAttachFrame(r io.Reader) (typ byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, nil, fmt.Errorf("attach stream cut inside a frame header: %w", err)
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxAttachFrame {
		return 0, nil, fmt.Errorf("attach frame of %d bytes exceeds the limit of %d", n, MaxAttachFrame)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("attach stream cut inside a frame: %w", err)
	}
	return hdr[0], payload, nil
}
