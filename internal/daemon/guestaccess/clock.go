package guestaccess

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/tail"
)

// ClockCommand is the guest command that sets the wall clock to the Unix
// time it reads as one line "SECONDS NANOSECONDS" on stdin. Starting
// date(1) takes a guest under emulation a few hundred milliseconds, during
// which the time read goes stale; so the script first times a dry run of
// date on the guest's monotonic clock (/proc/uptime, read by the shell
// itself, in centiseconds), then sets the time read plus what has passed
// since plus that start-up time.
const ClockCommand = `read -r s n || exit 1
read -r u0 _ </proc/uptime; u0=${u0%.*}${u0#*.}
date -u +%s >/dev/null
read -r u1 _ </proc/uptime; u1=${u1%.*}${u1#*.}
ns=$(( s*1000000000 + n + (u1-u0)*2*10000000 ))
f=$(( ns%1000000000 + 1000000000 ))
date -u -s "@$(( ns/1000000000 )).${f#1}" >/dev/null`

// SetClock steps a resumed guest's wall clock to the host's: while it was
// paused its clock stood still. The host's time is read only when the
// guest's command asks for its stdin, once the command runs, so the SSH
// session's set-up does not count against it.
func SetClock(ctx context.Context, c guest.Client, now func() time.Time) error {
	stderr := &tail.Buffer{Max: 4 << 10}
	code, err := c.Run(ctx, ClockCommand, &clockReader{now: now}, nil, stderr)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("setting the guest's clock exited %d: %s", code, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// SetClock steps a resumed VM's clock over its pooled connection.
func (sv *Service) SetClock(ctx context.Context, vm model.VM) error {
	c, err := sv.Dial(ctx, vm)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", vm.Name, err)
	}
	return SetClock(ctx, c, time.Now)
}

// clockReader yields "<unix seconds> <nanoseconds>\n" taken at its first
// Read, then EOF.
type clockReader struct {
	now  func() time.Time
	line []byte
	done bool
}

func (r *clockReader) Read(p []byte) (int, error) {
	if !r.done {
		t := r.now()
		r.line = []byte(strconv.FormatInt(t.Unix(), 10) + " " + strconv.Itoa(t.Nanosecond()) + "\n")
		r.done = true
	}
	if len(r.line) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.line)
	r.line = r.line[n:]
	return n, nil
}
