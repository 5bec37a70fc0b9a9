package guest

import (
	"context"
	"testing"
)

// BenchmarkRunPooled runs `true` through the pool: one connection, a new
// session per run.
func BenchmarkRunPooled(b *testing.B) {
	f := newFixture(b)
	p := NewPool(f.signer, nil)
	defer p.Close()
	ctx := context.Background()
	for b.Loop() {
		c, err := p.Get(ctx, "vm", f.ep)
		if err != nil {
			b.Fatal(err)
		}
		if code, err := c.Run(ctx, "true", nil, nil, nil); err != nil || code != 0 {
			b.Fatal(code, err)
		}
	}
}

// BenchmarkDialAndRun dials, runs `true` and closes each time.
func BenchmarkDialAndRun(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	for b.Loop() {
		c, err := Dial(ctx, f.ep, f.signer)
		if err != nil {
			b.Fatal(err)
		}
		if code, err := c.Run(ctx, "true", nil, nil, nil); err != nil || code != 0 {
			b.Fatal(code, err)
		}
		c.Close()
	}
}
