package guestaccess

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// clockGuest records the command and reads its stdin when it "runs".
type clockGuest struct {
	cmd    string
	stdin  string
	readAt time.Time
	code   int
	stderr string
}

func (g *clockGuest) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	g.cmd = cmd
	g.readAt = time.Now()
	b, _ := io.ReadAll(stdin)
	g.stdin = string(b)
	if stderr != nil {
		io.WriteString(stderr, g.stderr)
	}
	return g.code, nil
}

func (g *clockGuest) Close() error { return nil }

func TestSetClock(t *testing.T) {
	var asked time.Time
	now := func() time.Time { asked = time.Now(); return time.Unix(1764489600, 5) }
	g := &clockGuest{}
	if err := SetClock(context.Background(), g, now); err != nil {
		t.Fatal(err)
	}
	if g.cmd != ClockCommand || g.stdin != "1764489600.000000005\n" {
		t.Fatalf("ran %q with stdin %q", g.cmd, g.stdin)
	}
	// The host's time is taken when the guest reads it, not before.
	if asked.Before(g.readAt) {
		t.Fatalf("time taken at %v, before the guest command ran at %v", asked, g.readAt)
	}
	g = &clockGuest{code: 1, stderr: "date: cannot set date: Operation not permitted\n"}
	if err := SetClock(context.Background(), g, time.Now); err == nil || !strings.Contains(err.Error(), "exited 1: date: cannot set date") {
		t.Fatalf("failing date: %v", err)
	}
}
