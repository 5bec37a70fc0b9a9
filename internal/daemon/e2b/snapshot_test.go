package e2b

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// createSandbox makes a sandbox through the API, failing the test unless
// it answers 201.
func (fx *fixture) createSandbox(t *testing.T, body string, hdr ...string) sandboxJSON {
	t.Helper()
	code, out, _ := fx.do(t, "POST", "/v2/sandboxes", body, hdr...)
	if code != http.StatusCreated {
		t.Fatalf("create %s = %d %s", body, code, out)
	}
	var sb sandboxJSON
	if err := json.Unmarshal([]byte(out), &sb); err != nil {
		t.Fatal(err)
	}
	return sb
}

// health is envd's /health of a sandbox through the relay.
func (fx *fixture) health(t *testing.T, id string) int {
	t.Helper()
	code, _, _ := fx.do(t, "GET", "/health", "", "E2b-Sandbox-Id", id)
	return code
}

// TestFork: fork snapshots a running sandbox and makes count sandboxes
// that keep its environment, metadata and envd (the resumed memory's)
// but each get an envd token of their own, with the fork's timeout; a
// fork that fails is reported in its entry; the snapshot goes once its
// forks are gone; a restricted sandbox's forks are as restricted; a key
// over its cap is refused.
func TestFork(t *testing.T) {
	fx := newFixture(t)
	src := fx.createSandbox(t, `{"templateID":"base","envVars":{"FOO":"bar"},"metadata":{"team":"a"}}`)
	code, body, _ := fx.do(t, "POST", "/sandboxes/"+src.SandboxID+"/fork", `{"count":2,"timeout":60}`)
	if code != http.StatusCreated {
		t.Fatalf("fork = %d %s", code, body)
	}
	var res []forkResult
	if err := json.Unmarshal([]byte(body), &res); err != nil || len(res) != 2 {
		t.Fatalf("fork answer %s: %v", body, err)
	}
	var forks []string
	for _, r := range res {
		if r.Sandbox == nil || r.Error != nil {
			t.Fatalf("fork result %+v", r)
		}
		f := r.Sandbox
		if f.SandboxID == src.SandboxID || f.EnvdAccessToken == src.EnvdAccessToken || len(f.EnvdAccessToken) != 48 || f.TemplateID != "base" {
			t.Fatalf("fork %+v of %+v", f, src)
		}
		if code := fx.health(t, f.SandboxID); code != http.StatusNoContent {
			t.Fatalf("fork's envd health = %d", code)
		}
		// The envd the fork was restored with took the fork's token.
		for tok, want := range map[string]int{src.EnvdAccessToken: http.StatusUnauthorized, f.EnvdAccessToken: http.StatusOK} {
			if code, _, _ := fx.do(t, "POST", "/process.Process/List", "{}", "E2b-Sandbox-Id", f.SandboxID,
				"X-Access-Token", tok, "Content-Type", "application/json"); code != want {
				t.Fatalf("fork's envd with token %.6s…: %d, want %d", tok, code, want)
			}
		}
		sb, err := fx.svc.lookup(t.Context(), f.SandboxID)
		if err != nil || sb.rec.Env["FOO"] != "bar" || fx.vms.ttls[sb.vm.ID] != "60s" || Metadata(sb.vm.Labels)["team"] != "a" {
			t.Fatalf("fork record %+v labels %v ttl %q: %v", sb.rec, sb.vm.Labels, fx.vms.ttls[sb.vm.ID], err)
		}
		forks = append(forks, f.SandboxID)
	}
	snaps, _ := fx.vms.ListSnapshots(t.Context())
	if len(snaps) != 1 || !strings.HasPrefix(snaps[0].Name, forkSnapshotPrefix+src.SandboxID) {
		t.Fatalf("snapshots after fork: %+v", snaps)
	}
	if code, body, _ := fx.do(t, "GET", "/snapshots", ""); code != http.StatusOK || body != "[]\n" {
		t.Fatalf("listSnapshots shows fork's own snapshot: %d %s", code, body)
	}
	// The source runs on.
	if code := fx.health(t, src.SandboxID); code != http.StatusNoContent {
		t.Fatalf("source health after fork = %d", code)
	}
	for _, id := range forks {
		if code, body, _ := fx.do(t, "DELETE", "/sandboxes/"+id, ""); code != http.StatusNoContent {
			t.Fatalf("kill fork: %d %s", code, body)
		}
	}
	if snaps, _ := fx.vms.ListSnapshots(t.Context()); len(snaps) != 0 {
		t.Fatalf("the fork's snapshot outlived its forks: %+v", snaps)
	}

	// The second of two forks fails: one sandbox, one error.
	fx.vms.fromSnap, fx.vms.forkFailAt = 0, 2
	code, body, _ = fx.do(t, "POST", "/sandboxes/"+src.SandboxID+"/fork", `{"count":2}`)
	fx.vms.forkFailAt = 0
	res = nil
	if err := json.Unmarshal([]byte(body), &res); code != http.StatusCreated || err != nil || len(res) != 2 ||
		res[0].Sandbox == nil || res[1].Error == nil || res[1].Error.Code != http.StatusInternalServerError {
		t.Fatalf("partial fork = %d %s", code, body)
	}
	if sb, _ := fx.svc.lookup(t.Context(), res[0].Sandbox.SandboxID); fx.vms.ttls[sb.vm.ID] != "15s" {
		t.Fatalf("default fork timeout %q, want E2B's 15s", fx.vms.ttls[sb.vm.ID])
	}

	for _, tc := range []struct{ name, body string }{{"count 0", `{"count":0}`}, {"count 17", `{"count":17}`}, {"timeout 0", `{"timeout":0}`}} {
		if code, body, _ := fx.do(t, "POST", "/sandboxes/"+src.SandboxID+"/fork", tc.body); code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", tc.name, code, body)
		}
	}
	if code, _, _ := fx.do(t, "POST", "/sandboxes/e2bmissing/fork", ""); code != http.StatusNotFound {
		t.Errorf("fork of a missing sandbox: %d, want 404", code)
	}
	closed := fx.createSandbox(t, `{"allow_internet_access":false}`)
	code, body, _ = fx.do(t, "POST", "/sandboxes/"+closed.SandboxID+"/fork", "")
	res = nil
	if err := json.Unmarshal([]byte(body), &res); code != http.StatusCreated || err != nil || len(res) != 1 || res[0].Sandbox == nil {
		t.Fatalf("fork of a sandbox without internet: %d %s", code, body)
	}
	if sb, _ := fx.svc.lookup(t.Context(), res[0].Sandbox.SandboxID); sb.vm.Net.Mode != "none" {
		t.Errorf("the fork of a sandbox without internet has network %q", sb.vm.Net.String())
	}
	capped, _, err := fx.svc.CreateKey(t.Context(), "capped", 2)
	if err != nil {
		t.Fatal(err)
	}
	mine := fx.createSandbox(t, `{}`, "X-API-Key", capped)
	if code, body, _ := fx.do(t, "POST", "/sandboxes/"+mine.SandboxID+"/fork", `{"count":2}`, "X-API-Key", capped); code != http.StatusTooManyRequests {
		t.Errorf("fork past the key's cap: %d %s, want 429", code, body)
	}
	if code, body, _ := fx.do(t, "POST", "/sandboxes/"+mine.SandboxID+"/fork", `{"count":1}`, "X-API-Key", capped); code != http.StatusCreated {
		t.Errorf("fork within the key's cap: %d %s", code, body)
	}
	// Every sandbox VM, booted or forked, was asked to be ready once its
	// sshd listens: envd, not SSH, is how a sandbox is reached.
	fx.vms.mu.Lock()
	defer fx.vms.mu.Unlock()
	if len(fx.vms.readies) < 4 {
		t.Fatalf("creates seen: %v", fx.vms.readies)
	}
	for i, r := range fx.vms.readies {
		if r != api.ReadyListening {
			t.Errorf("create %d asked ready %q, want %q", i, r, api.ReadyListening)
		}
	}
	// And every booted one to start envd with its boot.
	if len(fx.vms.bootEnvds) == 0 {
		t.Fatal("no sandbox VM was booted")
	}
	for i, e := range fx.vms.bootEnvds {
		if !e {
			t.Errorf("booting create %d did not ask for envd at boot", i)
		}
	}
}

// TestEnvdOverControl: with a control channel, envd is started at
// create and given a fork's token over it, never with a script over
// SSH; the sandbox's environment goes with it; without one, SSH.
func TestEnvdOverControl(t *testing.T) {
	fx := newFixture(t)
	fx.vms.control = true
	src := fx.createSandbox(t, `{"envVars":{"FOO":"bar","A":"x=y"}}`)
	if code := fx.health(t, src.SandboxID); code != http.StatusNoContent {
		t.Fatalf("envd health = %d", code)
	}
	if fx.vms.controls != 1 || fx.vms.scripts != 0 || fx.vms.lastEnv["FOO"] != "bar" || fx.vms.lastEnv["A"] != "x=y" {
		t.Fatalf("create: %d control requests, %d scripts, env %v", fx.vms.controls, fx.vms.scripts, fx.vms.lastEnv)
	}
	code, body, _ := fx.do(t, "POST", "/sandboxes/"+src.SandboxID+"/fork", `{"count":1}`)
	var res []forkResult
	if err := json.Unmarshal([]byte(body), &res); code != http.StatusCreated || err != nil || len(res) != 1 || res[0].Sandbox == nil {
		t.Fatalf("fork = %d %s", code, body)
	}
	f := res[0].Sandbox
	for tok, want := range map[string]int{src.EnvdAccessToken: http.StatusUnauthorized, f.EnvdAccessToken: http.StatusOK} {
		if code, _, _ := fx.do(t, "POST", "/process.Process/List", "{}", "E2b-Sandbox-Id", f.SandboxID,
			"X-Access-Token", tok, "Content-Type", "application/json"); code != want {
			t.Fatalf("fork's envd with token %.6s…: %d, want %d", tok, code, want)
		}
	}
	if fx.vms.controls != 2 || fx.vms.scripts != 0 {
		t.Fatalf("fork: %d control requests, %d scripts", fx.vms.controls, fx.vms.scripts)
	}
	fx.vms.control = false
	fx.createSandbox(t, `{}`)
	if fx.vms.scripts != 1 {
		t.Fatalf("without a control channel: %d scripts, want 1", fx.vms.scripts)
	}
}

// TestSnapshots: createSnapshot names a snapshot of a running sandbox;
// listSnapshots filters by sandbox and name; Sandbox.create with its name
// forks it (a new envd token when the source sandbox is gone); a
// snapshot in use is not deleted, then is, then is not found.
func TestSnapshots(t *testing.T) {
	fx := newFixture(t)
	src := fx.createSandbox(t, `{}`)
	other := fx.createSandbox(t, `{}`)
	for _, s := range []struct{ id, name string }{{src.SandboxID, "snap1"}, {other.SandboxID, "snap2"}} {
		code, body, _ := fx.do(t, "POST", "/sandboxes/"+s.id+"/snapshots", `{"name":"`+s.name+`"}`)
		if code != http.StatusCreated || body != `{"snapshotID":"`+s.name+`","names":["`+s.name+`"]}`+"\n" {
			t.Fatalf("createSnapshot = %d %s", code, body)
		}
	}
	if code, _, _ := fx.do(t, "POST", "/sandboxes/"+src.SandboxID+"/snapshots", `{"name":"e2b-fork-x"}`); code != http.StatusBadRequest {
		t.Errorf("a snapshot named like fork's: %d, want 400", code)
	}
	list := func(q string) []string {
		code, body, _ := fx.do(t, "GET", "/snapshots"+q, "")
		var got []snapshotJSON
		if err := json.Unmarshal([]byte(body), &got); code != http.StatusOK || err != nil {
			t.Fatalf("list %s = %d %s", q, code, body)
		}
		var ids []string
		for _, s := range got {
			ids = append(ids, s.SnapshotID)
		}
		return ids
	}
	for q, want := range map[string]string{"": "snap1,snap2", "?sandboxID=" + src.SandboxID: "snap1",
		"?name=snap2:default": "snap2", "?limit=1": "snap1", "?nextToken=snap1": "snap2"} {
		if got := strings.Join(list(q), ","); got != want {
			t.Errorf("list %q = %s, want %s", q, got, want)
		}
	}

	// A paused sandbox can be snapshotted too, and stays paused.
	if code, body, _ := fx.do(t, "POST", "/sandboxes/"+other.SandboxID+"/pause", ""); code != http.StatusNoContent {
		t.Fatalf("pause = %d %s", code, body)
	}
	if code, body, _ := fx.do(t, "POST", "/sandboxes/"+other.SandboxID+"/snapshots", `{"name":"snap3"}`); code != http.StatusCreated {
		t.Fatalf("createSnapshot of a paused sandbox = %d %s", code, body)
	}
	if sb, err := fx.svc.lookup(t.Context(), other.SandboxID); err != nil || sb.vm.State != model.VMPaused {
		t.Fatalf("after its snapshot the sandbox is %s (%v), want paused", sb.vm.State, err)
	}
	if code, _, _ := fx.do(t, "DELETE", "/sandboxes/"+src.SandboxID, ""); code != http.StatusNoContent {
		t.Fatal("kill the source")
	}
	// Create's own metadata, envVars, timeout action and network.
	own := fx.createSandbox(t, `{"templateID":"snap1","metadata":{"a":"b"},"envVars":{"X":"1"},"autoPause":true,"allow_internet_access":false}`)
	if sb, err := fx.svc.lookup(t.Context(), own.SandboxID); err != nil || Metadata(sb.vm.Labels)["a"] != "b" || sb.rec.Env["X"] != "1" ||
		!sb.rec.AutoPause || sb.vm.ExpireAction != "pause" || sb.vm.Net.Mode != "none" {
		t.Fatalf("sandbox from a snapshot with its own settings: %+v %+v (%v)", sb.vm, sb.rec, err)
	}
	if code, _, _ := fx.do(t, "DELETE", "/sandboxes/"+own.SandboxID, ""); code != http.StatusNoContent {
		t.Fatal("kill it")
	}
	made := fx.createSandbox(t, `{"templateID":"snap1","timeout":90}`)
	if made.TemplateID != "snap1" || made.EnvdAccessToken == src.EnvdAccessToken || len(made.EnvdAccessToken) != 48 {
		t.Fatalf("sandbox from a snapshot whose source is gone: %+v", made)
	}
	if code := fx.health(t, made.SandboxID); code != http.StatusNoContent {
		t.Fatalf("its envd = %d", code)
	}
	if sb, _ := fx.svc.lookup(t.Context(), made.SandboxID); fx.vms.ttls[sb.vm.ID] != "90s" {
		t.Fatalf("timeout %q, want 90s", fx.vms.ttls[sb.vm.ID])
	}
	if code, _, _ := fx.do(t, "DELETE", "/templates/snap1", ""); code != http.StatusConflict {
		t.Errorf("delete a snapshot in use: %d, want 409", code)
	}
	if code, _, _ := fx.do(t, "DELETE", "/sandboxes/"+made.SandboxID, ""); code != http.StatusNoContent {
		t.Fatal("kill the copy")
	}
	if code, _, _ := fx.do(t, "DELETE", "/templates/snap1", ""); code != http.StatusNoContent {
		t.Errorf("delete a snapshot: %d, want 204", code)
	}
	if code, _, _ := fx.do(t, "DELETE", "/templates/snap1", ""); code != http.StatusNotFound {
		t.Errorf("delete it again: %d, want 404", code)
	}
}
