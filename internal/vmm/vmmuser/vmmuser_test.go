package vmmuser

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/banger/banger/internal/testenv"
)

func TestLookupRefusesRootAndBadNames(t *testing.T) {
	if _, err := Lookup("root"); err == nil || !strings.Contains(err.Error(), "must not be root") {
		t.Fatalf("Lookup(root): %v", err)
	}
	for _, name := range []string{"", "-x", "a:b", "a/b", "a\nb"} {
		if _, err := Ensure(context.Background(), name); err == nil || !strings.Contains(err.Error(), "invalid user name") {
			t.Errorf("Ensure(%q): %v", name, err)
		}
	}
	if _, err := Ensure(context.Background(), "root"); err == nil {
		t.Fatal("Ensure(root) accepted root")
	}
}

// Ensure creates a missing system user once, however many callers ask at
// the same time, and finds it afterwards.
func TestEnsureCreates(t *testing.T) {
	testenv.RequireE2E(t)
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "useradd")
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "banger-t-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	var wg sync.WaitGroup
	users := make([]User, 4)
	errs := make([]error, 4)
	for i := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			users[i], errs[i] = Ensure(context.Background(), name)
		}()
	}
	wg.Wait()
	for i := range users {
		if errs[i] != nil || users[i] != users[0] || users[i].UID == 0 || users[i].Name != name {
			t.Fatalf("Ensure #%d: %+v %v (first %+v)", i, users[i], errs[i], users[0])
		}
	}
	out, err := exec.Command("getent", "passwd", name).Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), ":/usr/sbin/nologin") {
		t.Fatalf("passwd entry %q (%v): want a nologin shell", out, err)
	}
	t.Logf("created %+v: %s", users[0], strings.TrimSpace(string(out)))
}
