package guestaccess

import (
	"context"
	"io"
	"os"
	"os/exec"
	"strconv"
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
	if g.cmd != ClockCommand || g.stdin != "1764489600 5\n" {
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

// The script sets the time read plus the time since plus one date start-up,
// in a real shell against a stand-in date that records its argument.
func TestClockCommandScript(t *testing.T) {
	dir := t.TempDir()
	date := dir + "/date"
	if err := os.WriteFile(date, []byte("#!/bin/sh\nfor a; do case $a in @*) echo \"$a\" > "+dir+"/set;; esac; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", ClockCommand)
	cmd.Env = []string{"PATH=" + dir + ":/usr/bin:/bin"}
	cmd.Stdin = strings.NewReader("1764489600 999999999\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	b, err := os.ReadFile(dir + "/set")
	if err != nil {
		t.Fatal(err)
	}
	got, err := strconv.ParseFloat(strings.TrimPrefix(strings.TrimSpace(string(b)), "@"), 64)
	if err != nil {
		t.Fatalf("date -s %q", b)
	}
	// At least the time read; at most a second more on this host.
	if got < 1764489600.999 || got > 1764489602 {
		t.Fatalf("date -s @%f for a time of 1764489600.999999999", got)
	}
	if !strings.Contains(string(b), ".") || len(strings.Split(strings.TrimSpace(string(b)), ".")[1]) != 9 {
		t.Fatalf("fraction not nine digits: %q", b)
	}
}
