package guestaccess

import (
	"testing"

	"github.com/banger/banger/internal/api"
)

func TestExecCommandQuoting(t *testing.T) {
	got, err := ExecCommand(api.ExecRequest{Command: []string{"sh", "-c", "echo $HOME 'x'"}, Cwd: "/root/my repo", Env: map[string]string{"B": "2", "A": "it's"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `cd '/root/my repo' && env 'A=it'\''s' 'B=2' sh -c 'echo $HOME '\''x'\'''`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if _, err := ExecCommand(api.ExecRequest{Command: []string{"true"}, Env: map[string]string{"1A": "x"}}); err == nil {
		t.Fatal("bad env key accepted")
	}
}
