// Package keyed is a lock table: one mutex per key (a VM id, a session id),
// made on first use and dropped when nobody holds or waits for it, so work
// on one key is serialised while different keys run in parallel.
//
// It is pure: no I/O.
package keyed

import "sync"

// Mutex serialises work per key. The zero value is ready to use.
type Mutex struct {
	mu    sync.Mutex
	locks map[string]*entry
}

type entry struct {
	mu   sync.Mutex
	refs int
}

// Lock locks key and returns the unlock function.
func (k *Mutex) Lock(key string) func() {
	e := k.ref(key)
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.unref(key, e)
	}
}

// TryLock locks key if nobody holds it, returning the unlock function and
// true; otherwise it returns false at once.
func (k *Mutex) TryLock(key string) (func(), bool) {
	e := k.ref(key)
	if !e.mu.TryLock() {
		k.unref(key, e)
		return nil, false
	}
	return func() {
		e.mu.Unlock()
		k.unref(key, e)
	}, true
}

// ref finds or makes key's entry and counts one more user of it.
func (k *Mutex) ref(key string) *entry {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.locks == nil {
		k.locks = map[string]*entry{}
	}
	e := k.locks[key]
	if e == nil {
		e = &entry{}
		k.locks[key] = e
	}
	e.refs++
	return e
}

// unref counts one user less, dropping the entry when nobody is left.
func (k *Mutex) unref(key string, e *entry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(k.locks, key)
	}
}
