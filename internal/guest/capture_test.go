package guest

import (
	"io"
	"strings"
	"testing"
)

func TestCaptureBounds(t *testing.T) {
	c := NewCapture(10)
	if _, err := io.WriteString(c, "0123456789"); err != nil || c.String() != "0123456789" {
		t.Fatalf("within the limit: %q, %v", c.String(), err)
	}
	if n, err := io.WriteString(c, "x"); err == nil || n != 0 || !strings.Contains(err.Error(), "more than 10 bytes") {
		t.Fatalf("past the limit: n=%d err=%v", n, err)
	}
	if c.Len() != 10 {
		t.Fatalf("kept %d bytes after a refused write", c.Len())
	}
	// A copy from an endless reader stops at the limit.
	c = NewCapture(1 << 10)
	if _, err := io.Copy(c, io.LimitReader(zeros{}, 1<<30)); err == nil || c.Len() > 1<<10 {
		t.Fatalf("endless answer: kept %d, err %v", c.Len(), err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { return len(p), nil }
