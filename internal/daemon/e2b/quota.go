package e2b

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger/banger/internal/model"
)

// quotaError is a create that would take an API key past its cap on
// sandboxes; it answers 429 with E2B's words for its concurrency limit
// (the SDK raises RateLimitError; without Retry-After it does not retry).
type quotaError struct {
	key string
	max int
}

func (e quotaError) Error() string {
	return fmt.Sprintf("you have reached the maximum number of concurrent E2B sandboxes (%d) of API key %q: kill or pause-and-kill one first", e.max, e.key)
}

func isQuota(err error) bool {
	var q quotaError
	return errors.As(err, &q)
}

type keyCtx struct{}

// withKey is ctx carrying the API key a request was authorized with.
func withKey(ctx context.Context, k model.E2BKey) context.Context {
	return context.WithValue(ctx, keyCtx{}, k)
}

// keyOf is the API key of ctx's request (the zero key when none).
func keyOf(ctx context.Context) model.E2BKey {
	k, _ := ctx.Value(keyCtx{}).(model.E2BKey)
	return k
}

// hold is sandboxes of a key's cap held for a create or fork.
type hold struct {
	s   *Service
	key string // "" when the key has no cap
	n   int
}

// record runs insert (storing one sandbox's record) and gives back one
// held sandbox in the same step, so the sandbox is never counted twice
// or not at all.
func (h *hold) record(insert func() error) error {
	h.s.quotaMu.Lock()
	defer h.s.quotaMu.Unlock()
	if err := insert(); err != nil {
		return err
	}
	if h.n > 0 {
		h.n--
		h.give(1)
	}
	return nil
}

// release gives back what is still held (a create that failed).
func (h *hold) release() {
	h.s.quotaMu.Lock()
	defer h.s.quotaMu.Unlock()
	h.give(h.n)
	h.n = 0
}

func (h *hold) give(n int) {
	if h.key == "" || n == 0 {
		return
	}
	if h.s.pending[h.key] -= n; h.s.pending[h.key] <= 0 {
		delete(h.s.pending, h.key)
	}
}

// reserve holds n sandboxes of k's cap for a create or fork: the
// sandboxes the key made that exist (running, paused or stopped) plus
// those being made must stay within k.MaxSandboxes (0: no cap).
func (s *Service) reserve(ctx context.Context, k model.E2BKey, n int) (*hold, error) {
	if k.MaxSandboxes <= 0 {
		return &hold{s: s}, nil
	}
	s.quotaMu.Lock()
	defer s.quotaMu.Unlock()
	recs, err := s.Store.ListE2BSandboxes(ctx)
	if err != nil {
		return nil, err
	}
	have := s.pending[k.ID]
	for _, r := range recs {
		if r.KeyID == k.ID {
			have++
		}
	}
	if have+n > k.MaxSandboxes {
		return nil, quotaError{key: k.Name, max: k.MaxSandboxes}
	}
	if s.pending == nil {
		s.pending = map[string]int{}
	}
	s.pending[k.ID] += n
	return &hold{s: s, key: k.ID, n: n}, nil
}
