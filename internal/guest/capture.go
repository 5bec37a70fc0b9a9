package guest

import (
	"bytes"
	"fmt"
	"sync"
)

// Capture is a writer for a guest command's answer that the caller parses
// whole: it keeps at most Max bytes and fails the write past that, so a
// guest that answers without end ends the command with an error instead
// of filling the daemon's memory. It may serve as stdout and stderr at
// once. The zero value keeps nothing; use NewCapture.
type Capture struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

// NewCapture makes a Capture keeping up to max bytes.
func NewCapture(max int) *Capture { return &Capture{max: max} }

// Write appends p, or fails without keeping any of it when that would pass
// the limit.
func (c *Capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf.Len()+len(p) > c.max {
		return 0, fmt.Errorf("the guest answered more than %d bytes: not read further", c.max)
	}
	return c.buf.Write(p)
}

// String returns what was kept.
func (c *Capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// Len is the number of bytes kept.
func (c *Capture) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Len()
}
