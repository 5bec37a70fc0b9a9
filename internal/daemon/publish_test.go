package daemon

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
)

func answers(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 2*time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// --publish takes its host ports before the VM is made: a taken one
// fails the create leaving nothing. The forwards then follow the VM:
// closed at stop, listened on again at start, gone with the VM.
func TestCreatePublish(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	taken := other.Addr().(*net.TCPAddr).Port

	_, err = f.d.CreateVM(ctx, api.CreateVMRequest{Name: "web", Disk: "64M", Start: true,
		Publish: []string{"0:8000", strconv.Itoa(taken) + ":80"}}, nil)
	if errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("create with a taken port = %v, want conflict", err)
	}
	t.Logf("create with a taken port: %v", err)
	if vms, _ := f.st.ListVMs(ctx); len(vms) != 0 {
		t.Fatalf("vms after the refused create: %+v", vms)
	}
	if fs, _ := f.st.ListForwards(ctx, ""); len(fs) != 0 || len(f.drv.Procs) != 0 || len(f.taps.Made) != 0 {
		t.Fatalf("left after the refused create: forwards %+v, %d vmm, taps %v", fs, len(f.drv.Procs), f.taps.Made)
	}

	vm, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: "web", Disk: "64M", Start: true, Publish: []string{"0:8000"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Ports) != 1 || vm.Ports[0].HostPort == 0 || vm.Ports[0].State != model.ForwardListening || vm.ImageName == "" || vm.KernelName == "" {
		t.Fatalf("create answer: ports %+v, image %q, kernel %q", vm.Ports, vm.ImageName, vm.KernelName)
	}
	port := vm.Ports[0].HostPort
	if !answers(port) {
		t.Fatal("published port does not answer")
	}
	state := func() string {
		t.Helper()
		got, err := f.d.GetVM(ctx, "web")
		if err != nil || len(got.Ports) != 1 {
			t.Fatalf("vm show: %+v, %v", got.Ports, err)
		}
		return got.Ports[0].State
	}
	if _, err := f.d.StopVM(ctx, "web", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	if answers(port) || state() != model.ForwardStopped {
		t.Fatalf("after stop: answers %v, state %s", answers(port), state())
	}
	if _, err := f.d.StartVM(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	if !answers(port) || state() != model.ForwardListening {
		t.Fatalf("after start: answers %v, state %s", answers(port), state())
	}
	if _, err := f.d.RestartVM(ctx, "web", nil); err != nil {
		t.Fatal(err)
	}
	if !answers(port) || state() != model.ForwardListening {
		t.Fatalf("after restart: answers %v, state %s", answers(port), state())
	}
	if err := f.d.DeleteVM(ctx, "web", true); err != nil {
		t.Fatal(err)
	}
	if fs, _ := f.st.ListForwards(ctx, ""); len(fs) != 0 || answers(port) {
		t.Fatalf("after delete: forwards %+v, answers %v", fs, answers(port))
	}
}
