package store

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/banger/banger/internal/model"
)

func TestForwards(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, v := range []model.VM{testVM("vm1aaaaa", "one", 2), testVM("vm2bbbbb", "two", 3)} {
		if err := s.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	f1 := model.Forward{VMID: "vm1aaaaa", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80, Proto: "tcp", CreatedAt: t0}
	f2 := model.Forward{VMID: "vm1aaaaa", HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22, Proto: "tcp", CreatedAt: t0}
	f3 := model.Forward{VMID: "vm2bbbbb", HostAddr: "0.0.0.0", HostPort: 9000, GuestPort: 9000, Proto: "tcp", CreatedAt: t0}
	for _, f := range []model.Forward{f1, f2, f3} {
		if err := s.CreateForward(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	// The same host address and port is published once, by any VM.
	dup := f1
	dup.VMID, dup.GuestPort = "vm2bbbbb", 81
	if err := s.CreateForward(ctx, dup); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate CreateForward: %v, want conflict", err)
	}
	if err := s.CreateForward(ctx, model.Forward{VMID: "nope", HostAddr: "127.0.0.1", HostPort: 1, Proto: "tcp", CreatedAt: t0}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CreateForward of a missing VM: %v, want not found", err)
	}
	if got, err := s.ListForwards(ctx, "vm1aaaaa"); err != nil || !reflect.DeepEqual(got, []model.Forward{f2, f1}) {
		t.Fatalf("ListForwards(vm1) = %+v, %v", got, err)
	}
	if got, err := s.ListForwards(ctx, ""); err != nil || len(got) != 3 {
		t.Fatalf("ListForwards() = %+v, %v", got, err)
	}
	if err := s.DeleteForward(ctx, "vm2bbbbb", "127.0.0.1", 8080); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteForward of another VM's port: %v, want not found", err)
	}
	if err := s.DeleteForward(ctx, "vm1aaaaa", "127.0.0.1", 2222); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteForwards(ctx, "vm1aaaaa"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListForwards(ctx, "vm1aaaaa"); len(got) != 0 {
		t.Fatalf("after DeleteForwards: %+v", got)
	}
	// Deleting a VM takes its forwards along.
	if err := s.DeleteVM(ctx, "vm2bbbbb"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListForwards(ctx, ""); len(got) != 0 {
		t.Fatalf("after DeleteVM: %+v", got)
	}
}
