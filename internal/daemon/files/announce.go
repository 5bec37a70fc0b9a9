package files

import (
	"bytes"
	"sync"

	"github.com/banger/banger/internal/tail"
	"github.com/banger/banger/internal/transfer"
)

// announceWriter is a streaming script's stderr: it passes the first
// data-channel announcement line (transfer.AnnouncePrefix...) to
// Announced and keeps the rest, the script's messages, as a bounded
// tail. (It lives here rather than in transfer, which banger-init links:
// the guest's binary, and so the image's recipe key, stays as it is.)
type announceWriter struct {
	mu      sync.Mutex
	tail    tail.Buffer
	partial []byte
	sent    bool
	ch      chan string
}

// newAnnounceWriter keeps at most max bytes of messages.
func newAnnounceWriter(max int) *announceWriter {
	return &announceWriter{tail: tail.Buffer{Max: max}, ch: make(chan string, 1)}
}

// Announced delivers the first announcement line, once.
func (a *announceWriter) Announced() <-chan string { return a.ch }

func (a *announceWriter) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.partial = append(a.partial, p...)
	for {
		i := bytes.IndexByte(a.partial, '\n')
		if i < 0 {
			break
		}
		line := string(a.partial[:i+1])
		a.partial = a.partial[i+1:]
		if _, _, ok := transfer.ParseAnnounce(line); ok {
			if !a.sent {
				a.sent = true
				a.ch <- line
			}
			continue
		}
		_, _ = a.tail.Write([]byte(line))
	}
	if len(a.partial) > 4096 {
		// A long line without newline: keep it as message text.
		_, _ = a.tail.Write(a.partial)
		a.partial = a.partial[:0]
	}
	return len(p), nil
}

// String is the messages kept, announcements left out.
func (a *announceWriter) String() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return string(a.tail.Bytes()) + string(a.partial)
}
