package envd

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/banger/banger/internal/envd/spec/process"
)

func TestWarmUp(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	ts := testServer(t)
	if err := WarmUp(context.Background(), ts.URL, testToken); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	// It is an ordinary client: a wrong token gets nowhere.
	if err := WarmUp(context.Background(), ts.URL, "not-the-token-0123"); err == nil || !strings.Contains(err.Error(), "unauthenticated") {
		t.Fatalf("warm-up with a wrong token: %v", err)
	}
	// Nothing of it stays running.
	ps, _ := clients(ts)
	list, err := ps.List(context.Background(), connect.NewRequest(&process.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.Msg.GetProcesses()); n != 0 {
		t.Fatalf("%d processes left after the warm-up", n)
	}
}
