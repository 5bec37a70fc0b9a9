package qemu

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveQMP answers one connection on a new socket with script: each
// element is written after one line is read from the client (the first
// element before any is read).
func serveQMP(t *testing.T, script ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for i, s := range script {
			if i > 0 {
				if _, err := r.ReadBytes('\n'); err != nil {
					return
				}
			}
			if _, err := c.Write([]byte(s)); err != nil {
				return
			}
		}
		_, _ = r.ReadBytes('\n')
	}()
	return sock
}

const greeting = `{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\n"

func TestQMPSkipsEventBeforeGreeting(t *testing.T) {
	sock := serveQMP(t,
		`{"event": "JOB_STATUS_CHANGE", "data": {}}`+"\n"+greeting,
		`{"return": {}, "id": 1}`+"\n",
		`{"event": "X"}`+"\n"+`{"return": {"running": true, "status": "running"}, "id": 2}`+"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var st qmpStatus
	if err := c.execute(ctx, "query-status", nil, &st); err != nil || !st.Running {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
}

func TestQMPRefusesNonGreeting(t *testing.T) {
	sock := serveQMP(t, "hello there\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := dialQMP(ctx, sock)
	if err == nil || !strings.Contains(err.Error(), "not a QMP server") || !strings.Contains(err.Error(), "hello there") {
		t.Fatalf("dial = %v, want a refusal quoting the line", err)
	}
}

// A QEMU the guest took over must not make the daemon buffer an answer
// without end.
func TestQMPBoundsMessages(t *testing.T) {
	huge := `{"return": "` + strings.Repeat("a", 2*maxQMPLine) + `", "id": 2}` + "\n"
	sock := serveQMP(t, greeting, `{"return": {}, "id": 1}`+"\n", huge)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.execute(ctx, "query-status", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("execute = %v, want the message refused for its size", err)
	}
	// Just under the bound is read.
	ok := `{"return": "` + strings.Repeat("a", maxQMPLine-64) + `", "id": 2}` + "\n"
	sock = serveQMP(t, greeting, `{"return": {}, "id": 1}`+"\n", ok)
	c2, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	var s string
	if err := c2.execute(ctx, "x", nil, &s); err != nil || len(s) != maxQMPLine-64 {
		t.Fatalf("execute = %d bytes, %v; want the whole answer", len(s), err)
	}
}
