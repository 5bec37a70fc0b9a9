package files

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/banger/banger/internal/errdefs"
)

// Budget bounds what one read takes out of a guest: the bytes of the
// stream (a file's, or a tar's with its headers) and, for a tar, its
// entries. A guest can make a file endless or a tree of millions of
// names; the user asked for a copy, not for the host's disk to fill.
type Budget struct {
	MaxBytes   int64 // 0: DefaultBudget's
	MaxEntries int   // 0: DefaultBudget's
}

// DefaultBudget: four times the default work disk and as many names as
// storage's copy limit, far above what a copy out of a sandbox needs and
// far below what would hurt the host; the config keys max_copy_out and
// max_copy_out_entries move it.
var DefaultBudget = Budget{MaxBytes: 16 << 30, MaxEntries: 1 << 20}

func (b Budget) orDefault() Budget {
	if b.MaxBytes <= 0 {
		b.MaxBytes = DefaultBudget.MaxBytes
	}
	if b.MaxEntries <= 0 {
		b.MaxEntries = DefaultBudget.MaxEntries
	}
	return b
}

// ErrOverBudget is returned (wrapped) when a read passes its budget.
var ErrOverBudget = errors.New("over the copy budget")

// byteBudget passes at most max bytes to w; the write that would pass it
// fails with ErrOverBudget and writes nothing more.
type byteBudget struct {
	w    io.Writer
	n    int64
	max  int64
	what string
	over func() // called when the budget is passed (cancels the read)
	mu   sync.Mutex
	err  error // why the budget stopped the stream
}

func newByteBudget(w io.Writer, b Budget, what string, over func()) *byteBudget {
	return &byteBudget{w: w, max: b.orDefault().MaxBytes, what: what, over: over}
}

func (b *byteBudget) trip(err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
		if b.over != nil {
			b.over()
		}
	}
	return b.err
}

// Err is why the budget stopped the stream, nil when it did not.
func (b *byteBudget) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *byteBudget) Write(p []byte) (int, error) {
	if err := b.Err(); err != nil {
		return 0, err
	}
	if b.n+int64(len(p)) > b.max {
		return 0, b.trip(fmt.Errorf("%s: more than %d bytes (max_copy_out): %w", b.what, b.max, ErrOverBudget))
	}
	n, err := b.w.Write(p)
	b.n += int64(n)
	return n, err
}

// tarBudget is a byteBudget that also reads the stream's tar headers as
// it passes (in a goroutine fed through a pipe) and fails once the
// entries pass max. A stream that is not a tar fails too: the client
// would refuse it at the same place.
type tarBudget struct {
	*byteBudget
	pw   *io.PipeWriter
	done chan struct{}
}

func newTarBudget(w io.Writer, b Budget, what string, over func()) *tarBudget {
	b = b.orDefault()
	pr, pw := io.Pipe()
	t := &tarBudget{byteBudget: newByteBudget(w, b, what, over), pw: pw, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		tr := tar.NewReader(pr)
		entries := 0
		for {
			_, err := tr.Next()
			if err == io.EOF {
				_, _ = io.Copy(io.Discard, pr) // tar pads past its end
				return
			}
			if err == nil {
				if entries++; entries <= b.MaxEntries {
					continue
				}
				err = fmt.Errorf("%s: more than %d entries (max_copy_out_entries): %w", what, b.MaxEntries, ErrOverBudget)
			} else {
				err = fmt.Errorf("%s: the guest's archive is malformed: %v", what, err)
			}
			pr.CloseWithError(t.trip(err))
			return
		}
	}()
	return t
}

func (t *tarBudget) Write(p []byte) (int, error) {
	if _, err := t.pw.Write(p); err != nil {
		if terr := t.Err(); terr != nil {
			return 0, terr
		}
		return 0, err
	}
	return t.byteBudget.Write(p)
}

// Close ends the header reader and returns the budget's verdict.
func (t *tarBudget) Close() error {
	t.pw.Close()
	<-t.done
	return t.Err()
}

// budgetError makes a budget failure a conflict naming the key to raise;
// it stands over err, which the cut stream caused.
func budgetError(berr, err error) error {
	if berr != nil {
		err = berr
	}
	if errors.Is(err, ErrOverBudget) {
		return errdefs.Errorf(errdefs.CodeConflict, "%v: the copy was stopped; raise the key in bangerd's configuration if the guest is trusted with more", err)
	}
	return err
}
