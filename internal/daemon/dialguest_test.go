package daemon

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/envd"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/model"
)

// TestDialGuestTCPChoice: a published port goes straight to the guest's
// address when it answers there, through SSH when it refuses (remembered),
// and always through SSH when the configuration says ssh.
func TestDialGuestTCPChoice(t *testing.T) {
	var direct, viaSSH int
	refuse := false
	d := countingDialer(&direct, &viaSSH, &refuse, func(int) {})
	vm := model.VM{ID: "v1", Name: "v", GuestIP: "172.16.0.2"}
	ctx := context.Background()
	if c, err := d.dialGuestTCP(ctx, vm, 8000); err != nil || direct != 1 || viaSSH != 0 {
		t.Fatalf("listening on the guest's address: %v, direct %d, ssh %d", err, direct, viaSSH)
	} else {
		c.Close()
	}
	refuse = true
	for i := 0; i < 3; i++ {
		if _, err := d.dialGuestTCP(ctx, vm, 9000); err == nil || err.Error() != "ssh path taken" {
			t.Fatalf("refused directly: %v", err)
		}
	}
	if direct != 2 || viaSSH != 3 {
		t.Fatalf("a refusal is remembered: direct %d (want 2), ssh %d (want 3)", direct, viaSSH)
	}
	d.cfg.WorkspaceTransport = "ssh"
	refuse = false
	if _, err := d.dialGuestTCP(ctx, vm, 8000); err == nil || direct != 2 {
		t.Fatalf("transport ssh: %v, direct %d", err, direct)
	}
}

// countingDialer is a daemon whose direct dials (counted in direct,
// each port given to seen) refuse while *refuse, and whose SSH dials
// (counted in viaSSH) fail with "ssh path taken".
func countingDialer(direct, viaSSH *int, refuse *bool, seen func(port int)) *Daemon {
	d := &Daemon{cfg: config.Defaults()}
	d.dialData = func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
		*direct++
		seen(port)
		if *refuse {
			return nil, errors.New("connection refused")
		}
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	d.dialGuest = func(ctx context.Context, vm model.VM) (guest.Client, error) {
		*viaSSH++
		return nil, errors.New("ssh path taken")
	}
	return d
}

// TestDialEnvdChoice: envd is reached on the guest's address; a refusal
// (envd still starting, or one listening on loopback only) goes through
// SSH and is not remembered, so the next connection tries directly again;
// transport ssh keeps it on SSH.
func TestDialEnvdChoice(t *testing.T) {
	var direct, viaSSH int
	refuse := true
	d := countingDialer(&direct, &viaSSH, &refuse, func(port int) {
		if port != envd.Port {
			t.Errorf("envd dialled on port %d", port)
		}
	})
	vm := model.VM{ID: "v1", Name: "v", GuestIP: "172.16.0.2"}
	ctx := context.Background()
	if _, err := d.dialEnvd(ctx, vm); err == nil || err.Error() != "ssh path taken" || direct != 1 || viaSSH != 1 {
		t.Fatalf("refused directly: %v, direct %d, ssh %d", err, direct, viaSSH)
	}
	refuse = false
	if c, err := d.dialEnvd(ctx, vm); err != nil || direct != 2 || viaSSH != 1 {
		t.Fatalf("listening after a refusal: %v, direct %d, ssh %d", err, direct, viaSSH)
	} else {
		c.Close()
	}
	d.cfg.WorkspaceTransport = "ssh"
	if _, err := d.dialEnvd(ctx, vm); err == nil || direct != 2 || viaSSH != 2 {
		t.Fatalf("transport ssh: %v, direct %d, ssh %d", err, direct, viaSSH)
	}
}

// TestDialVMRefusesBadPorts: a port outside 1-65535 is the request's
// fault, refused before any VM is looked up.
func TestDialVMRefusesBadPorts(t *testing.T) {
	d := &Daemon{cfg: config.Defaults()}
	for _, port := range []int{0, -1, 65536} {
		if _, err := d.DialVM(context.Background(), "v", port); errdefs.CodeOf(err) != errdefs.CodeInvalid {
			t.Errorf("DialVM port %d: %v, want invalid", port, err)
		}
	}
}
