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

	k := model.E2BKey{ID: "k1aaaaaaaa", Name: "ci", Hash: "h1", Prefix: "e2b_12345", CreatedAt: t0, MaxSandboxes: 3}
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

	if _, ok, err := s.E2BListener(ctx); ok || err != nil {
		t.Fatalf("E2BListener before any = %v, %v", ok, err)
	}
	want := E2BListenerRecord{Listen: "127.0.0.1:4000", Domain: "sb.example", TLS: true, DNS: "127.0.0.1:5353"}
	for _, l := range []E2BListenerRecord{{Listen: "127.0.0.1:3000", Domain: "sb.example"}, want} {
		if err := s.SetE2BListener(ctx, l, t0); err != nil {
			t.Fatal(err)
		}
	}
	if l, ok, err := s.E2BListener(ctx); !ok || err != nil || l != want {
		t.Fatalf("E2BListener = %+v %v %v", l, ok, err)
	}
	if err := s.ClearE2BListener(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.E2BListener(ctx); ok {
		t.Fatal("listener still recorded after Clear")
	}

	if err := s.CreateVM(ctx, testVM("vm1aaaaa", "one", 2)); err != nil {
		t.Fatal(err)
	}
	sb := model.E2BSandbox{VMID: "vm1aaaaa", TemplateID: "base", Token: "tok",
		Env: map[string]string{"A": "b"}, AutoPause: true, CreatedAt: t0, KeyID: "k1aaaaaaaa", AutoResume: true, TimeoutSecs: 90, TrafficToken: "traffic",
		MaskHost: "localhost:${PORT}", HTTPSPorts: []int{8443}}
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
