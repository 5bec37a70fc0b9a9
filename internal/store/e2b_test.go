package store

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

func TestE2BKeysAndSandboxes(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	k := model.E2BKey{ID: "k1aaaaaaaa", Name: "ci", Hash: "h1", Prefix: "e2b_12345", CreatedAt: t0}
	if err := s.CreateE2BKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateE2BKey(ctx, model.E2BKey{ID: "k2", Name: "ci", Hash: "h2", CreatedAt: t0}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate name: %v, want conflict", err)
	}
	got, err := s.E2BKeyByHash(ctx, "h1")
	if err != nil || !reflect.DeepEqual(got, k) {
		t.Fatalf("E2BKeyByHash = %+v, %v", got, err)
	}
	if _, err := s.E2BKeyByHash(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown hash: %v", err)
	}
	used := t0.Add(time.Hour)
	if err := s.TouchE2BKey(ctx, k.ID, used); err != nil {
		t.Fatal(err)
	}
	if keys, _ := s.ListE2BKeys(ctx); len(keys) != 1 || keys[0].LastUsed == nil || !keys[0].LastUsed.Equal(used) {
		t.Fatalf("ListE2BKeys = %+v", keys)
	}
	if del, err := s.DeleteE2BKey(ctx, "ci"); err != nil || del.ID != k.ID {
		t.Fatalf("DeleteE2BKey = %+v, %v", del, err)
	}
	if _, err := s.DeleteE2BKey(ctx, "ci"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}

	if _, _, ok, err := s.E2BListener(ctx); ok || err != nil {
		t.Fatalf("E2BListener before any = %v, %v", ok, err)
	}
	for _, l := range []string{"127.0.0.1:3000", "127.0.0.1:4000"} {
		if err := s.SetE2BListener(ctx, l, "sb.example", t0); err != nil {
			t.Fatal(err)
		}
	}
	if l, d, ok, err := s.E2BListener(ctx); !ok || err != nil || l != "127.0.0.1:4000" || d != "sb.example" {
		t.Fatalf("E2BListener = %q %q %v %v", l, d, ok, err)
	}
	if err := s.ClearE2BListener(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := s.E2BListener(ctx); ok {
		t.Fatal("listener still recorded after Clear")
	}

	if err := s.CreateVM(ctx, testVM("vm1aaaaa", "one", 2)); err != nil {
		t.Fatal(err)
	}
	sb := model.E2BSandbox{VMID: "vm1aaaaa", TemplateID: "base", Token: "tok",
		Env: map[string]string{"A": "b"}, AutoPause: true, CreatedAt: t0}
	if err := s.CreateE2BSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateE2BSandbox(ctx, model.E2BSandbox{VMID: "missing", CreatedAt: t0}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("sandbox of a missing VM: %v", err)
	}
	if got, err := s.E2BSandbox(ctx, "vm1aaaaa"); err != nil || !reflect.DeepEqual(got, sb) {
		t.Fatalf("E2BSandbox = %+v, %v", got, err)
	}
	if err := s.DeleteVM(ctx, "vm1aaaaa"); err != nil {
		t.Fatal(err)
	}
	if all, _ := s.ListE2BSandboxes(ctx); len(all) != 0 {
		t.Fatalf("sandbox outlived its VM: %+v", all)
	}
}
