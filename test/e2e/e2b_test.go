package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// e2bSDKVersion is the npm `e2b` version the e2e runs (installed by
// scripts/e2b-sdk.sh; the unit tests also run the previous minor).
const e2bSDKVersion = "2.51.0"

// TestE2BSDK runs the real E2B SDK against bangerd and real guests: the
// control plane listens on the host's 127.0.0.1 (the daemon lives in the
// test namespace), and the Node script gets only E2B_API_URL,
// E2B_SANDBOX_URL and E2B_API_KEY (testdata/e2b_sdk.cjs lists the calls).
func TestE2BSDK(t *testing.T) {
	h := NewHarness(t)
	// The first create builds the default image and pulls the kernel,
	// which takes longer than the SDK waits for a request: do it here.
	h.MustRun("vm", "create", "--name", "warm")
	h.MustRun("vm", "delete", "warm")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out, err := e2bNode(t, ctx, h, "testdata/e2b_sdk.cjs").CombinedOutput()
	t.Logf("SDK script:\n%s", out)
	if err != nil {
		t.Fatalf("SDK script: %v", err)
	}
	if !strings.Contains(string(out), "ok   wrong API key") {
		t.Fatal("the SDK script did not reach its last step")
	}
	// The timed-out sandbox stops answering before its deletion ends.
	var vms []model.VM
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		h.JSON(&vms, "vm", "list")
		if len(vms) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandboxes left a minute after kill and timeout: %+v", vms)
		}
	}
	h.AssertNoLeaks()
}
