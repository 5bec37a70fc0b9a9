package guest

import (
	"bytes"
	"testing"
)

func TestAnswer(t *testing.T) {
	var b bytes.Buffer
	overs := 0
	a := &Answer{W: &b, Max: 10, Over: func() { overs++ }}
	for _, s := range []string{"0123", "4567", "89"} {
		if n, err := a.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("write %q: %d %v", s, n, err)
		}
	}
	if a.Overflowed() || b.String() != "0123456789" || overs != 0 {
		t.Fatalf("at the cap: overflowed %v, %q, %d overs", a.Overflowed(), b.String(), overs)
	}
	for i := 0; i < 3; i++ {
		if n, err := a.Write([]byte("x")); n != 1 || err != nil {
			t.Fatalf("write past the cap: %d %v", n, err)
		}
	}
	if !a.Overflowed() || b.String() != "0123456789" || overs != 1 {
		t.Fatalf("past the cap: overflowed %v, %q, %d overs", a.Overflowed(), b.String(), overs)
	}
}
