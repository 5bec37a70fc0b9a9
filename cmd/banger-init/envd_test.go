package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestEnvdFiles(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A sandbox without envVars has an empty environment file.
	if got, err := readSmall(empty); err != nil || got != "" {
		t.Fatalf("readSmall(empty) = %q, %v", got, err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte(strings.Repeat("x", maxEnvdFile+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readSmall(big); err == nil {
		t.Fatal("readSmall of an oversized file succeeded")
	}
	got := parseEnvLines("A=1\n\nB=x=y\nnoequals\n=v\n")
	if want := map[string]string{"A": "1", "B": "x=y"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("parseEnvLines = %v, want %v", got, want)
	}
}

// TestEnvdNeedsToken: banger-init envd refuses to serve without a token.
func TestEnvdNeedsToken(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := runEnvd([]string{"--listen", "127.0.0.1:0", "--token-file", tok}); code != 2 {
		t.Fatalf("runEnvd with an empty token = %d, want 2", code)
	}
	if code := runEnvd([]string{"--listen", "127.0.0.1:0"}); code != 2 {
		t.Fatalf("runEnvd without --token-file = %d, want 2", code)
	}
}

type fakeReconf struct {
	token string
	env   map[string]string
}

func (f *fakeReconf) Reconfigure(token string, env map[string]string) error {
	if token == "" {
		return os.ErrInvalid
	}
	f.token, f.env = token, env
	return nil
}

// TestEnvdReload: SIGHUP's reload takes the .new token and environment,
// then moves them over the files (the daemon's sign that they are in
// force); an empty token changes nothing and keeps the .new file.
func TestEnvdReload(t *testing.T) {
	dir := t.TempDir()
	tok, env := filepath.Join(dir, "token"), filepath.Join(dir, "env")
	write := func(p, s string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(tok, "old\n")
	write(env, "A=1\n")
	f := &fakeReconf{}
	if err := reload(f, tok, env); err == nil {
		t.Fatal("reload without a .new token succeeded")
	}
	write(tok+".new", "\n")
	if err := reload(f, tok, env); err == nil || f.token != "" {
		t.Fatalf("reload of an empty token: %v, token %q", err, f.token)
	}
	if _, err := os.Stat(tok + ".new"); err != nil {
		t.Fatalf("a refused token file was moved: %v", err)
	}
	write(tok+".new", "fresh\n")
	if err := reload(f, tok, env); err != nil || f.token != "fresh" || !reflect.DeepEqual(f.env, map[string]string{"A": "1"}) {
		t.Fatalf("reload keeping the environment: %v, %q %v", err, f.token, f.env)
	}
	write(tok+".new", "newer\n")
	write(env+".new", "B=2\n")
	if err := reload(f, tok, env); err != nil || f.token != "newer" || !reflect.DeepEqual(f.env, map[string]string{"B": "2"}) {
		t.Fatalf("reload: %v, %q %v", err, f.token, f.env)
	}
	for p, want := range map[string]string{tok: "newer\n", env: "B=2\n"} {
		if b, err := os.ReadFile(p); err != nil || string(b) != want {
			t.Fatalf("%s = %q, %v", p, b, err)
		}
		if _, err := os.Stat(p + ".new"); !os.IsNotExist(err) {
			t.Fatalf("%s.new left: %v", p, err)
		}
	}
}
