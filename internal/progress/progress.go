// Package progress is how long work (image build, kernel pull, VM boot)
// reports its phases to whoever asked for it. The API streams these events
// as frames; the packages doing the work only call a Func.
//
// It is pure: no I/O.
package progress

// Event reports a phase of long work.
type Event struct {
	Phase   string  `json:"phase"`             // short machine name, e.g. "debootstrap", "mkfs", "boot", "ssh"
	Message string  `json:"message,omitempty"` // human line
	Done    int64   `json:"done,omitempty"`    // units done, when known (bytes, files)
	Total   int64   `json:"total,omitempty"`   // units in all, when known
	Elapsed float64 `json:"elapsed,omitempty"` // seconds since the work began
}

// Func receives progress events; it must not block for long.
type Func func(Event)

// OrNop returns f, or a Func that drops events when f is nil.
func OrNop(f Func) Func {
	if f == nil {
		return func(Event) {}
	}
	return f
}
