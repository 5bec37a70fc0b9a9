package keyed

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestSerialisesOneKeyNotOthers(t *testing.T) {
	var m Mutex
	var inA atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := m.Lock("a")
			if n := inA.Add(1); n != 1 {
				t.Errorf("%d holders of key a at once", n)
			}
			inA.Add(-1)
			unlock()
		}()
	}
	// A different key is free while "a" is held.
	unlockA := m.Lock("a")
	done := make(chan struct{})
	go func() { m.Lock("b")(); close(done) }()
	<-done
	unlockA()
	wg.Wait()
	if len(m.locks) != 0 {
		t.Errorf("%d entries left after every unlock", len(m.locks))
	}
}

func TestTryLock(t *testing.T) {
	var m Mutex
	unlock := m.Lock("a")
	if _, ok := m.TryLock("a"); ok {
		t.Fatal("TryLock took a held key")
	}
	u, ok := m.TryLock("b")
	if !ok {
		t.Fatal("TryLock of a free key failed")
	}
	u()
	unlock()
	u, ok = m.TryLock("a")
	if !ok {
		t.Fatal("TryLock after unlock failed")
	}
	u()
	if len(m.locks) != 0 {
		t.Errorf("%d entries left after every unlock", len(m.locks))
	}
}
