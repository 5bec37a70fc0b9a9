package transfer

import (
	"strings"
	"testing"
)

func TestAnnounceWriter(t *testing.T) {
	a := NewAnnounceWriter(64)
	// The announcement arrives split across writes, between messages; a
	// second one is dropped, not delivered and not kept as a message.
	for _, p := range []string{"warming up\nbanger-li", "sten=4100", "7\n", Announce(9) + "\n", "done\n"} {
		if n, err := a.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	select {
	case line := <-a.Announced():
		if port, _, ok := ParseAnnounce(line); !ok || port != 41007 {
			t.Fatalf("announced %q", line)
		}
	default:
		t.Fatal("no announcement delivered")
	}
	select {
	case line := <-a.Announced():
		t.Fatalf("a second announcement was delivered: %q", line)
	default:
	}
	if got := a.String(); got != "warming up\ndone\n" {
		t.Fatalf("messages = %q", got)
	}

	// Messages are bounded, and so is a line that never ends.
	b := NewAnnounceWriter(64)
	b.Write([]byte(strings.Repeat("x", 10000)))
	if got := b.String(); len(got) > 64+4096 {
		t.Fatalf("kept %d bytes of an endless line", len(got))
	}
}
