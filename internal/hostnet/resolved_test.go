package hostnet

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"
)

// TestParkedNames: what a paused VM's tap held comes back on the
// resume's tap of the same name and guest, answers having expired by
// the clock meanwhile and open connections with the time they had left;
// anything else forgets it.
func TestParkedNames(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ng := newNameGate()
	ng.now = func() time.Time { return now }
	a, b, c := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"), netip.MustParseAddr("203.0.113.3")
	g := Guest{IP: netip.MustParseAddr("172.16.0.2"), Policy: mustPolicy(t, "none", []string{"*.example.test"}, nil, nil)}
	const tap = "tap-park"
	running := func() {
		t.Helper()
		ng.set(tap, g, carry{
			open: map[netip.Addr]opened{a: {until: now.Add(60 * time.Second), name: "a.example.test"},
				b: {until: now.Add(600 * time.Second), name: "b.example.test"}},
			seen: map[netip.Addr]string{a: "a.example.test", b: "b.example.test", c: "c.example.test"},
		})
	}
	running()
	ng.park(tap, map[netip.Addr]time.Duration{a: 200 * time.Second, c: 90 * time.Second, b: 500 * time.Millisecond})
	if _, ok := ng.byIP[g.IP]; ok {
		t.Fatal("a parked tap still admits answers")
	}
	ng.park(tap, nil) // a resume's teardown of what a crash left
	now = now.Add(120 * time.Second)

	got := ng.carried(tap, g, nil, nil)
	if _, ok := got.open[a]; ok {
		t.Error("an answer that expired while paused came back")
	}
	if o, ok := got.open[b]; !ok || !o.until.Equal(now.Add(480*time.Second)) {
		t.Errorf("answer b = %+v, %v; want it open until its own expiry", o, ok)
	}
	if got.inuse[a] != 200*time.Second || got.inuse[c] != 90*time.Second {
		t.Errorf("in use = %v; want a 200s and c 90s, as at the pause", got.inuse)
	}
	if _, ok := got.inuse[b]; ok {
		t.Error("an address with under a second left was kept in use")
	}

	// The policy changed while paused: what its names no longer allow
	// stays closed.
	narrow := g
	narrow.Policy = mustPolicy(t, "none", []string{"c.example.test"}, nil, nil)
	got = ng.carried(tap, narrow, nil, nil)
	if len(got.open) != 0 || len(got.inuse) != 1 || got.inuse[c] != 90*time.Second {
		t.Errorf("narrowed policy carried %v open, %v in use; want only c in use", got.open, got.inuse)
	}

	// Another guest on that tap name gets what the kernel holds, not
	// what was parked.
	other := g
	other.IP = netip.MustParseAddr("172.16.0.9")
	if got := ng.carried(tap, other, nil, nil); len(got.open)+len(got.inuse) != 0 {
		t.Errorf("another guest got the parked sets: %+v", got)
	}

	// Made again: the parked sets are used once.
	ng.set(tap, g, ng.carried(tap, g, nil, nil))
	if _, ok := ng.parked[tap]; ok {
		t.Error("parked sets kept after the tap was made again")
	}

	// A delete (stop, VM deleted) forgets them.
	running()
	ng.park(tap, map[netip.Addr]time.Duration{a: 200 * time.Second})
	ng.drop(tap)
	if got := ng.carried(tap, g, nil, nil); len(got.open)+len(got.inuse) != 0 {
		t.Errorf("a deleted tap's parked sets came back: %+v", got)
	}

	// A tap whose policy has no names parks nothing.
	ng.set(tap, Guest{IP: g.IP, Policy: mustPolicy(t, "none", nil, nil, nil)}, carry{})
	ng.park(tap, map[netip.Addr]time.Duration{a: 200 * time.Second})
	if len(ng.parked) != 0 {
		t.Errorf("parked %v for a tap without names", ng.parked)
	}
}

// TestParkedNamesKept: what ParkTap answers goes through JSON (the
// daemon's scratch file) and Repark into a Network that knows nothing,
// and the resume's tap gets the same; a damaged one is refused whole.
func TestParkedNamesKept(t *testing.T) {
	now := time.Now()
	a, b := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")
	g := Guest{IP: netip.MustParseAddr("172.16.0.2"), Policy: mustPolicy(t, "none", []string{"*.example.test"}, nil, nil)}
	const tap = "tap-park"
	old := newNameGate()
	old.set(tap, g, carry{open: map[netip.Addr]opened{a: {until: now.Add(time.Minute), name: "a.example.test"}},
		seen: map[netip.Addr]string{a: "a.example.test", b: "b.example.test"}})
	old.park(tap, map[netip.Addr]time.Duration{b: 100 * time.Second})
	raw, err := json.Marshal(old.parked[tap])
	if err != nil {
		t.Fatal(err)
	}
	var p ParkedNames
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	n := &Network{names: newNameGate()}
	if err := n.Repark(tap, p); err != nil {
		t.Fatal(err)
	}
	got := n.names.carried(tap, g, nil, nil)
	if o := got.open[a]; !o.until.Equal(now.Add(time.Minute)) || o.name != "a.example.test" || len(got.open) != 1 {
		t.Errorf("open after Repark = %v", got.open)
	}
	if got.inuse[b] != 100*time.Second || len(got.inuse) != 1 || got.seen[b] != "b.example.test" {
		t.Errorf("in use after Repark = %v (seen %v)", got.inuse, got.seen)
	}

	for what, damage := range map[string]func(*ParkedNames){
		"guest address":  func(p *ParkedNames) { p.IP = netip.Addr{} },
		"no names":       func(p *ParkedNames) { p.Policy = Policy{} },
		"answer address": func(p *ParkedNames) { p.Open[0].Addr = netip.MustParseAddr("::1") },
		"time in use":    func(p *ParkedNames) { p.InUse[0].Left = 24 * time.Hour },
		"too many answers": func(p *ParkedNames) {
			for range 2 * MaxResolved {
				p.Open = append(p.Open, p.Open[0])
			}
		},
	} {
		var bad ParkedNames
		_ = json.Unmarshal(raw, &bad)
		damage(&bad)
		n := &Network{names: newNameGate()}
		if err := n.Repark(tap, bad); err == nil {
			t.Errorf("%s damaged: Repark accepted it", what)
		}
		if len(n.names.parked) != 0 {
			t.Errorf("%s damaged: parked %v", what, n.names.parked)
		}
	}
	if err := (&Network{names: newNameGate()}).Repark("bad name!", p); err == nil {
		t.Error("Repark took a bad tap name")
	}
}
