// Package tail owns keeping and reading the end of output: the last lines of
// a byte slice (Lines), a writer that keeps only its last bytes (Buffer),
// and the last lines of a file read from its end (File).
//
// Logs and stderr here come from guests, which may write without bound:
// nothing in this package holds or reads more than the bound its caller
// gives. It only reads files (never writes them) and formats no messages;
// callers say what the lines are.
package tail

import (
	"bytes"
	"io"
	"os"
)

// Lines returns the last n lines of b (all of b when n <= 0), as a subslice
// of b. A final line without a newline counts as a line; a final newline
// is kept.
func Lines(b []byte, n int) []byte {
	if n <= 0 || len(b) == 0 {
		return b
	}
	end := len(b)
	if b[end-1] == '\n' {
		end--
	}
	for i := end - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return b[i+1:]
			}
		}
	}
	return b
}

// Buffer is an io.Writer that keeps only the last Max bytes written to it
// (nothing when Max <= 0): enough of a stream for an error message, however
// much the writer sends. The zero value with Max set is ready to use. It is
// not safe for concurrent use.
type Buffer struct {
	Max int
	b   []byte
}

// Write keeps the end of p; it never fails.
func (t *Buffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.Max {
		t.b = append(t.b[:0], t.b[len(t.b)-max(t.Max, 0):]...)
	}
	return len(p), nil
}

// Bytes returns the kept bytes as written (the cut may fall inside a UTF-8
// sequence). The slice is valid until the next Write.
func (t *Buffer) Bytes() []byte { return t.b }

// String returns the kept bytes with each run of invalid UTF-8 (such as a
// sequence cut by the bound) replaced by "?".
func (t *Buffer) String() string { return string(bytes.ToValidUTF8(t.b, []byte("?"))) }

// End reads at most the last maxBytes bytes of the file at path and
// returns them with the offset just past them (the file's size when read).
// It seeks to that window and reads only it, so a huge or sparse file
// costs no more than a small one.
func End(path string, maxBytes int64) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, 0, err
	}
	start := max(size-max(maxBytes, 0), 0)
	b := make([]byte, size-start)
	n, err := f.ReadAt(b, start)
	if err != nil && err != io.EOF { // EOF: the file shrank meanwhile
		return nil, 0, err
	}
	return b[:n], start + int64(n), nil
}

// File returns the last nLines lines (all when nLines <= 0) of the last
// maxBytes bytes of the file at path, without its trailing newlines (see
// End); the window may begin inside a line or a UTF-8 sequence, and the
// bytes are returned as they are.
func File(path string, maxBytes int64, nLines int) (string, error) {
	b, _, err := End(path, maxBytes)
	if err != nil {
		return "", err
	}
	return string(Lines(bytes.TrimRight(b, "\n"), nLines)), nil
}
