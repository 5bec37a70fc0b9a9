package provider

import (
	"context"
	"log/slog"
	"time"

	"github.com/banger/banger/internal/progress"
)

// timer collects the steps of one piece of a pod's start (CreatePod, a
// status push) and logs them at debug level in one line: what each step
// took, in milliseconds, and the total. banger-vk --verbose shows them;
// docs/kubernetes.md ("Speed") reads them.
type timer struct {
	p     *Provider
	pod   string
	start time.Time
	last  time.Time
	attrs []any
}

func (p *Provider) timer(pod string) *timer {
	now := p.now()
	return &timer{p: p, pod: pod, start: now, last: now}
}

func (t *timer) enabled() bool {
	return t.p.log.Enabled(context.Background(), slog.LevelDebug)
}

// mark ends a step named name.
func (t *timer) mark(name string) {
	if !t.enabled() {
		return
	}
	now := t.p.now()
	t.attrs = append(t.attrs, name+"_ms", now.Sub(t.last).Milliseconds())
	t.last = now
}

// phases is a progress.Func that logs bangerd's boot phases as they
// arrive (their elapsed time is the daemon's, from the start of its
// work).
func (t *timer) phases(ev progress.Event) {
	if !t.enabled() {
		return
	}
	t.p.log.Debug("pod vm phase", "pod", t.pod, "phase", ev.Phase, "elapsed_s", ev.Elapsed,
		"since_create_pod_ms", t.p.now().Sub(t.start).Milliseconds())
}

// done logs the steps under msg.
func (t *timer) done(msg string, attrs ...any) {
	if !t.enabled() {
		return
	}
	all := append([]any{"pod", t.pod}, attrs...)
	all = append(all, t.attrs...)
	all = append(all, "total_ms", t.p.now().Sub(t.start).Milliseconds())
	t.p.log.Debug(msg, all...)
}
