package e2e

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// poolProbe prints a guest's hostname, machine id, address, MAC and
// SSH host key, a line each.
const poolProbe = `hostname; cat /etc/machine-id; ip -4 -o addr show eth0 | awk '{print $4}'; cat /sys/class/net/eth0/address; ` +
	`cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub`

// waitSpares polls `image warm --list` until the template has n spares
// ready, and answers how long that took.
func waitSpares(t testing.TB, h *Harness, template string, n int) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		var ts []model.Snapshot
		h.JSON(&ts, "image", "warm", "--list")
		for _, tm := range ts {
			if tm.Name == template && tm.Spares == n {
				return time.Since(start)
			}
		}
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("%s has no %d spares ready after 2m: %+v", template, n, ts)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestWarmPool runs the daemon with warm_pool 1: after `image warm` a
// spare is restored ahead of time; `vm run` takes it (its progress says
// so) and is itself (hostname = its name); a create right after, while
// the pool waits to refill, restores from the template instead (it does
// not wait; either is accepted) and works; a create with a host port in
// use fails leaving the spare ready; the next create takes the new spare
// with its name, labels, --net open and a published port; the guests
// have their own machine ids and host keys, and the two running side by
// side their own addresses and MACs; `vm list` never shows a spare;
// `image unwarm` deletes the spare with the template and nothing is
// left behind.
func TestWarmPool(t *testing.T) {
	h := NewHarness(t, "BANGER_WARM_POOL=1")
	shape := []string{"--cpus", "1", "--memory", "256M"}
	var tmpl model.Snapshot
	h.JSON(&tmpl, append([]string{"image", "warm"}, shape...)...)
	t.Logf("spare ready %.1fs after the template", waitSpares(t, h, tmpl.Name, 1).Seconds())
	noSpares := func() []model.VM {
		var vms []model.VM
		h.JSON(&vms, "vm", "list")
		for _, vm := range vms {
			if strings.HasPrefix(vm.Name, "spare-") || vm.Labels["banger.dev/spare"] != "" {
				t.Fatalf("vm list shows a spare: %+v", vm)
			}
		}
		return vms
	}
	noSpares()
	lines := func(name, out string) []string {
		l := strings.Split(strings.TrimSpace(out), "\n")
		if len(l) != 5 {
			t.Fatalf("%s: probe answered %q", name, out)
		}
		return l
	}

	start := time.Now()
	out, errOut, code := h.Run(append(append([]string{"vm", "run", "--rm", "-v", "--name", "p1"}, shape...), "--", "sh", "-c", poolProbe)...)
	if code != 0 {
		t.Fatalf("vm run: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("pooled vm run in %.1fs:\n%s", time.Since(start).Seconds(), errOut)
	if !strings.Contains(errOut, "] pool: taking spare") || strings.Contains(errOut, "restoring from template") {
		t.Fatalf("vm run did not come from the pool:\n%s", errOut)
	}
	p1 := lines("p1", out)
	if p1[0] != "p1" {
		t.Fatalf("the pooled run's hostname is %q, want p1", p1[0])
	}

	// Right after: the pool is being refilled, so this one restores.
	_, errOut, code = h.Run(append([]string{"vm", "create", "--start", "--name", "a"}, shape...)...)
	if code != 0 {
		t.Fatalf("vm create a: exit %d\n%s", code, errOut)
	}
	fromPool := strings.Contains(errOut, "pool: taking spare")
	t.Logf("a: from the pool %v\n%s", fromPool, errOut)
	if !fromPool && !strings.Contains(errOut, "restoring from template") {
		t.Fatalf("a was neither taken from the pool nor restored:\n%s", errOut)
	}
	a := lines("a", h.MustRun("vm", "exec", "a", "--", "sh", "-c", poolProbe))

	waitSpares(t, h, tmpl.Name, 1)
	// A host port in use fails the create before a spare is touched.
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	taken := other.Addr().(*net.TCPAddr).Port
	_, errOut, code = h.Run(append([]string{"vm", "create", "--start", "--name", "clash", "-p", strconv.Itoa(taken) + ":80"}, shape...)...)
	other.Close()
	if code == 0 || !strings.Contains(errOut, "is taken") {
		t.Fatalf("create with a taken host port: exit %d, %q", code, errOut)
	}
	if _, _, code := h.Run("vm", "show", "clash"); code == 0 {
		t.Fatal("the refused create left a vm")
	}
	waitSpares(t, h, tmpl.Name, 1)
	// Its name, labels, network policy (other than the template's) and
	// a published port.
	_, errOut, code = h.Run(append([]string{"vm", "create", "--start", "--name", "b", "--label", "app=b", "--net", "open", "-p", "0:8000"}, shape...)...)
	if code != 0 || !strings.Contains(errOut, "pool: taking spare") {
		t.Fatalf("vm create b did not come from the pool: exit %d\n%s", code, errOut)
	}
	b := lines("b", h.MustRun("vm", "exec", "b", "--", "sh", "-c", poolProbe))
	if a[0] != "a" || b[0] != "b" {
		t.Fatalf("hostnames %q %q", a[0], b[0])
	}
	if vm := h.VM("b"); vm.Labels["app"] != "b" || vm.State != model.VMRunning || vm.DNSName != "b.vm" || vm.Net.Mode != "open" ||
		len(vm.Ports) != 1 || vm.Ports[0].State != model.ForwardListening {
		t.Fatalf("b = %+v", vm)
	}
	// p1 is gone (--rm): its address may go to a later VM; a and b run
	// side by side.
	for i, what := range []string{"", "machine id", "address", "MAC", "host key"} {
		if i > 0 && (a[i] == b[i] || (what == "machine id" || what == "host key") && (p1[i] == a[i] || p1[i] == b[i])) {
			t.Errorf("two guests share a %s: %q %q %q", what, p1[i], a[i], b[i])
		}
	}
	if vms := noSpares(); len(vms) != 2 {
		t.Fatalf("vm list = %+v, want a and b", vms)
	}

	h.MustRun("vm", "delete", "--force", "a", "b")
	waitSpares(t, h, tmpl.Name, 1)
	h.MustRun("image", "unwarm", tmpl.Name)
	var ts []model.Snapshot
	h.JSON(&ts, "image", "warm", "--list")
	if len(ts) != 0 {
		t.Fatalf("after unwarm: %+v", ts)
	}
	h.AssertNoLeaks()
}
