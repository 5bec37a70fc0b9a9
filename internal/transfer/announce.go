package transfer

import (
	"bytes"
	"sync"

	"github.com/banger/banger/internal/tail"
)

// AnnounceWriter is the stderr of a guest script that starts a receiver:
// it passes the first announcement line (see ParseAnnounce) to Announced
// and keeps the rest, the script's messages, as a bounded tail.
type AnnounceWriter struct {
	mu      sync.Mutex
	tail    tail.Buffer
	partial []byte
	sent    bool
	ch      chan string
}

// NewAnnounceWriter keeps at most max bytes of messages.
func NewAnnounceWriter(max int) *AnnounceWriter {
	return &AnnounceWriter{tail: tail.Buffer{Max: max}, ch: make(chan string, 1)}
}

// Announced delivers the first announcement line, once.
func (a *AnnounceWriter) Announced() <-chan string { return a.ch }

func (a *AnnounceWriter) Write(p []byte) (int, error) {
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
		if _, _, ok := ParseAnnounce(line); ok {
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
func (a *AnnounceWriter) String() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return string(a.tail.Bytes()) + string(a.partial)
}
