package guest

import (
	"io"
	"sync"
)

// MaxAnswer bounds what the daemon keeps in memory of a guest's answer to
// one command (a script's output, not a stream a client reads): far above
// any script's, far below what would hurt the host.
const MaxAnswer = 16 << 20

// Answer is a writer for a guest's answer that keeps at most Max bytes in
// W. A guest can make its answer endless, so past Max it keeps nothing
// more and calls Over once, where the caller cancels the command; it
// never fails a write, which would leave the command blocked on a full
// channel rather than stopped.
type Answer struct {
	W    io.Writer
	Max  int64
	Over func()

	mu   sync.Mutex
	n    int64
	over bool
}

func (a *Answer) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.over {
		return len(p), nil
	}
	if a.n+int64(len(p)) > a.Max {
		a.over = true
		if a.Over != nil {
			a.Over()
		}
		return len(p), nil
	}
	a.n += int64(len(p))
	return a.W.Write(p)
}

// Overflowed reports whether the answer went over Max.
func (a *Answer) Overflowed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.over
}
