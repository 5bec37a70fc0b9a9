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
