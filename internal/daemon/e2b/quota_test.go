package e2b

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// TestKeyQuota: a key capped at 2 sandboxes gets 429 with E2B's words for
// its concurrency limit (and no Retry-After, so the SDK does not retry)
// on a third create, concurrent creates included; a kill frees a place;
// other keys are not counted against it.
func TestKeyQuota(t *testing.T) {
	fx := newFixture(t)
	capped, rec, err := fx.svc.CreateKey(t.Context(), "capped", 2)
	if err != nil || rec.MaxSandboxes != 2 {
		t.Fatalf("CreateKey = %+v, %v", rec, err)
	}
	if _, _, err := fx.svc.CreateKey(t.Context(), "negative", -1); err == nil {
		t.Fatal("a negative cap was accepted")
	}
	create := func(key string) (int, string, http.Header) {
		return fx.do(t, "POST", "/v2/sandboxes", `{"templateID":"base"}`, "X-API-Key", key)
	}

	// Five at once: two get through.
	var wg sync.WaitGroup
	codes := make([]int, 5)
	ids := make([]string, 5)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body, hdr := create(capped)
			codes[i] = code
			if code == http.StatusCreated {
				var sb sandboxJSON
				_ = json.Unmarshal([]byte(body), &sb)
				ids[i] = sb.SandboxID
			} else if code != http.StatusTooManyRequests || hdr.Get("Retry-After") != "" ||
				!strings.Contains(body, `"code":429`) || !strings.Contains(body, "maximum number of concurrent E2B sandboxes (2)") {
				t.Errorf("over the cap: %d %s (Retry-After %q)", code, body, hdr.Get("Retry-After"))
			}
		}()
	}
	wg.Wait()
	made := []string{}
	for i, c := range codes {
		if c == http.StatusCreated {
			made = append(made, ids[i])
		}
	}
	if len(made) != 2 {
		t.Fatalf("concurrent creates: %v, want two 201", codes)
	}

	// Another key's sandboxes do not count.
	if code, body, _ := create(fx.key); code != http.StatusCreated {
		t.Fatalf("uncapped key: %d %s", code, body)
	}
	if code, _, _ := create(capped); code != http.StatusTooManyRequests {
		t.Fatalf("third create: %d, want 429", code)
	}
	if code, body, _ := fx.do(t, "DELETE", "/sandboxes/"+made[0], "", "X-API-Key", capped); code != http.StatusNoContent {
		t.Fatalf("kill: %d %s", code, body)
	}
	if code, body, _ := create(capped); code != http.StatusCreated {
		t.Fatalf("create after a kill: %d %s", code, body)
	}
	if n := len(fx.svc.pending); n != 0 {
		t.Fatalf("holds left behind: %v", fx.svc.pending)
	}
}
