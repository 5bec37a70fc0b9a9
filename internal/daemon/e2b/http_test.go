package e2b

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/envd"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/testenv"
)

func TestControlPlaneAuth(t *testing.T) {
	fx := newFixture(t)
	for _, tc := range []struct {
		name string
		hdr  []string
		want int
	}{
		{"no key", []string{"X-API-Key", ""}, 401},
		{"wrong key", []string{"X-API-Key", "e2b_wrong"}, 401},
		{"bearer", []string{"X-API-Key", "", "Authorization", "Bearer " + fx.key}, 200},
		{"x-api-key", nil, 200},
	} {
		code, body, _ := fx.do(t, "GET", "/v2/sandboxes", "", tc.hdr...)
		if code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, code, body, tc.want)
		}
		if code == 401 && !strings.Contains(body, `"code":401`) {
			t.Errorf("%s: error body %s, want {code, message}", tc.name, body)
		}
	}
	if _, err := fx.svc.RevokeKey(t.Context(), "test"); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := fx.do(t, "GET", "/v2/sandboxes", ""); code != 401 {
		t.Errorf("revoked key: %d, want 401", code)
	}
}

func TestSandboxLifecycle(t *testing.T) {
	fx := newFixture(t)
	code, body, _ := fx.do(t, "POST", "/v2/sandboxes", `{"templateID":"base","timeout":120,"metadata":{"team":"a"},"envVars":{"FOO":"bar"}}`)
	if code != 201 {
		t.Fatalf("create = %d %s", code, body)
	}
	var created sandboxJSON
	if err := json.Unmarshal([]byte(body), &created); err != nil {
		t.Fatal(err)
	}
	if created.TemplateID != "base" || !strings.HasPrefix(created.SandboxID, "e2b") || created.EnvdVersion != envd.Version ||
		len(created.EnvdAccessToken) != 48 || created.Domain != "localhost:"+fx.port() || created.ClientID != clientID {
		t.Fatalf("create answer = %+v", created)
	}
	id := created.SandboxID
	// A second one with other metadata, for the list filters.
	if code, body, _ = fx.do(t, "POST", "/sandboxes", `{"templateID":"other","metadata":{"team":"b"},"allow_internet_access":false}`); code != 201 {
		t.Fatalf("v1 create = %d %s", code, body)
	}
	var other sandboxJSON
	_ = json.Unmarshal([]byte(body), &other)
	if vm, _ := fx.vms.Get(t.Context(), other.SandboxID); vm.Net.Mode != "none" {
		t.Errorf("allow_internet_access false: net %q, want none", vm.Net.Mode)
	}

	code, body, _ = fx.do(t, "GET", "/sandboxes/"+id, "")
	var info detailJSON
	if code != 200 || json.Unmarshal([]byte(body), &info) != nil || info.State != "running" || info.EnvdAccessToken != created.EnvdAccessToken ||
		!reflect.DeepEqual(info.Metadata, map[string]string{"team": "a"}) || info.CPUCount != 2 || info.MemoryMB != 1024 ||
		info.EndAt.Before(time.Now().Add(100*time.Second)) {
		t.Fatalf("info = %d %s", code, body)
	}

	meta := url.QueryEscape(url.Values{"team": {"a"}}.Encode())
	code, body, _ = fx.do(t, "GET", "/v2/sandboxes?metadata="+meta, "")
	var listed []listedJSON
	if code != 200 || json.Unmarshal([]byte(body), &listed) != nil || len(listed) != 1 || listed[0].SandboxID != id {
		t.Fatalf("list team=a = %d %s", code, body)
	}
	code, body, hdr := fx.do(t, "GET", "/v2/sandboxes?limit=1", "")
	if code != 200 || hdr.Get("X-Next-Token") == "" || strings.Count(body, "sandboxID") != 1 {
		t.Fatalf("list limit=1 = %d %s next %q", code, body, hdr.Get("X-Next-Token"))
	}
	code, body, hdr = fx.do(t, "GET", "/v2/sandboxes?limit=1&nextToken="+hdr.Get("X-Next-Token"), "")
	if code != 200 || hdr.Get("X-Next-Token") != "" || strings.Count(body, "sandboxID") != 1 {
		t.Fatalf("list page 2 = %d %s next %q", code, body, hdr.Get("X-Next-Token"))
	}
	if code, body, _ = fx.do(t, "GET", "/v2/sandboxes?state=paused", ""); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("list paused = %d %s", code, body)
	}

	if code, body, _ = fx.do(t, "POST", "/sandboxes/"+id+"/timeout", `{"timeout":3600}`); code != 204 {
		t.Fatalf("timeout = %d %s", code, body)
	}
	vm, _ := fx.vms.Get(t.Context(), id)
	if vm.ExpiresAt == nil || vm.ExpiresAt.Before(time.Now().Add(3500*time.Second)) {
		t.Fatalf("deadline after timeout = %v", vm.ExpiresAt)
	}
	// connect with a shorter timeout keeps the later deadline.
	if code, body, _ = fx.do(t, "POST", "/v2/sandboxes/"+id+"/connect", `{"timeout":10}`); code != 200 || !strings.Contains(body, created.EnvdAccessToken) {
		t.Fatalf("connect = %d %s", code, body)
	}
	if vm, _ = fx.vms.Get(t.Context(), id); vm.ExpiresAt.Before(time.Now().Add(3500 * time.Second)) {
		t.Fatalf("connect shortened the deadline to %v", vm.ExpiresAt)
	}
	// envd gone (as after a restart of the VM by hand): connect starts it
	// again, with the same token.
	fx.vms.mu.Lock()
	fx.vms.envds[vm.ID].Close()
	delete(fx.vms.envds, vm.ID)
	fx.vms.mu.Unlock()
	if code, body, _ = fx.do(t, "POST", "/v2/sandboxes/"+id+"/connect", `{}`); code != 200 {
		t.Fatalf("connect without envd = %d %s", code, body)
	}
	if code, body, _ = fx.do(t, "POST", "/process.Process/List", "{}", "X-API-Key", "", "E2b-Sandbox-Id", id,
		"Connect-Protocol-Version", "1", "X-Access-Token", created.EnvdAccessToken); code != 200 {
		t.Fatalf("envd after connect = %d %s", code, body)
	}
	// The metadata is the VM's labels.
	if vm, _ = fx.vms.Get(t.Context(), id); !reflect.DeepEqual(vm.Labels, map[string]string{"e2b.meta/team": "a"}) {
		t.Fatalf("vm labels = %v", vm.Labels)
	}
	// Pause, list paused, resume by connect (201), pause again, resume.
	if code, body, _ = fx.do(t, "POST", "/sandboxes/"+id+"/pause", `{"memory":true}`); code != 204 {
		t.Fatalf("pause = %d %s", code, body)
	}
	if code, body, _ = fx.do(t, "POST", "/sandboxes/"+id+"/pause", ""); code != 409 {
		t.Fatalf("second pause = %d %s, want 409", code, body)
	}
	// A paused sandbox is kept until resumed or killed: no deadline.
	if vm, _ = fx.vms.Get(t.Context(), id); vm.ExpiresAt != nil {
		t.Fatalf("deadline of a paused sandbox: %v", vm.ExpiresAt)
	}
	code, body, _ = fx.do(t, "GET", "/v2/sandboxes?state=paused", "")
	if code != 200 || json.Unmarshal([]byte(body), &listed) != nil || len(listed) != 1 || listed[0].SandboxID != id || listed[0].State != "paused" {
		t.Fatalf("list paused = %d %s", code, body)
	}
	if code, body, _ = fx.do(t, "GET", "/v2/sandboxes?state=running", ""); code != 200 || strings.Contains(body, id) {
		t.Fatalf("list running = %d %s", code, body)
	}
	if code, body, _ = fx.do(t, "POST", "/sandboxes/"+id+"/resume", `{}`); code != 201 || !strings.Contains(body, created.EnvdAccessToken) {
		t.Fatalf("resume = %d %s", code, body)
	}
	if code, body, _ = fx.do(t, "POST", "/sandboxes/"+id+"/resume", `{}`); code != 409 {
		t.Fatalf("resume of a running sandbox = %d %s, want 409", code, body)
	}
	if code, body, _ = fx.do(t, "POST", "/sandboxes/"+id+"/pause", ""); code != 204 {
		t.Fatalf("pause = %d %s", code, body)
	}
	if code, body, _ = fx.do(t, "POST", "/v2/sandboxes/"+id+"/connect", `{"timeout":60}`); code != 201 {
		t.Fatalf("connect of a paused sandbox = %d %s, want 201", code, body)
	}
	if vm, _ = fx.vms.Get(t.Context(), id); vm.State != model.VMRunning || vm.ExpiresAt.After(time.Now().Add(61*time.Second)) || vm.ExpireAction != model.TTLDelete {
		t.Fatalf("after connect: state %s, deadline %v %s", vm.State, vm.ExpiresAt, vm.ExpireAction)
	}
	// A connect whose resume lost to another one still answers the
	// running sandbox.
	if code, body, _ = fx.do(t, "POST", "/sandboxes/"+id+"/pause", ""); code != 204 {
		t.Fatalf("pause = %d %s", code, body)
	}
	fx.vms.mu.Lock()
	fx.vms.raceResume = true
	fx.vms.mu.Unlock()
	if code, body, _ = fx.do(t, "POST", "/v2/sandboxes/"+id+"/connect", `{}`); code != 201 || !strings.Contains(body, created.EnvdAccessToken) {
		t.Fatalf("connect racing another resume = %d %s, want 201", code, body)
	}
	fx.vms.mu.Lock()
	fx.vms.raceResume = false
	fx.vms.mu.Unlock()
	code, body, _ = fx.do(t, "GET", "/sandboxes/"+id+"/metrics", "")
	var metrics []metricJSON
	if code != 200 || json.Unmarshal([]byte(body), &metrics) != nil || len(metrics) != 1 || metrics[0].MemTotal == 0 || metrics[0].CPUCount == 0 {
		t.Fatalf("metrics = %d %s", code, body)
	}

	// Bad input.
	for _, bad := range []string{`{"autoResume":{"enabled":true}}`, `{"autoPause":false,"autoResume":{"enabled":true}}`, `{"metadata":{"bad key":"x"}}`, `{"timeout":0}`, `{"timeout":2592001}`, `{"envVars":{"A-B":"x"}}`, `{"volumeMounts":[{}]}`, `{"templateID":"nope"}`, `{`} {
		if code, body, _ = fx.do(t, "POST", "/v2/sandboxes", bad); code < 400 || code >= 500 {
			t.Errorf("create %s = %d %s, want 4xx", bad, code, body)
		}
	}
	if code, _, _ = fx.do(t, "GET", "/sandboxes/e2bnope", ""); code != 404 {
		t.Errorf("info of unknown = %d", code)
	}

	if code, body, _ = fx.do(t, "DELETE", "/sandboxes/"+id, ""); code != 204 {
		t.Fatalf("kill = %d %s", code, body)
	}
	if code, _, _ = fx.do(t, "DELETE", "/sandboxes/"+id, ""); code != 404 {
		t.Fatalf("kill again = %d, want 404", code)
	}
}

// TestAutoPause: autoPause makes the deadline's action pause, kept when
// the timeout is set again, and info says so.
func TestAutoPause(t *testing.T) {
	fx := newFixture(t)
	code, body, _ := fx.do(t, "POST", "/v2/sandboxes", `{"timeout":30,"autoPause":true}`)
	var sb sandboxJSON
	if code != 201 || json.Unmarshal([]byte(body), &sb) != nil {
		t.Fatalf("create = %d %s", code, body)
	}
	if vm, _ := fx.vms.Get(t.Context(), sb.SandboxID); vm.ExpireAction != model.TTLPause {
		t.Fatalf("deadline action %q, want pause", vm.ExpireAction)
	}
	if code, body, _ = fx.do(t, "POST", "/sandboxes/"+sb.SandboxID+"/timeout", `{"timeout":90}`); code != 204 {
		t.Fatalf("timeout = %d %s", code, body)
	}
	if vm, _ := fx.vms.Get(t.Context(), sb.SandboxID); vm.ExpireAction != model.TTLPause {
		t.Fatalf("deadline action after setTimeout %q, want pause", vm.ExpireAction)
	}
	var info detailJSON
	if code, body, _ = fx.do(t, "GET", "/sandboxes/"+sb.SandboxID, ""); code != 200 || json.Unmarshal([]byte(body), &info) != nil || info.Lifecycle.OnTimeout != "pause" {
		t.Fatalf("info = %d %s", code, body)
	}
}

// TestTimeoutFromReady: a sandbox's timeout counts from when it is
// ready, not from the request: a boot longer than the timeout leaves it
// its whole timeout, with its action, and the deadline meanwhile cannot
// act before it is made.
func TestTimeoutFromReady(t *testing.T) {
	fx := newFixture(t)
	fx.vms.slowCreate = 1500 * time.Millisecond
	for _, tc := range []struct{ body, action string }{
		{`{"timeout":1}`, model.TTLDelete},
		{`{"timeout":1,"autoPause":true}`, model.TTLPause},
	} {
		asked := time.Now()
		code, body, _ := fx.do(t, "POST", "/v2/sandboxes", tc.body)
		answered := time.Now()
		var sb sandboxJSON
		if code != 201 || json.Unmarshal([]byte(body), &sb) != nil {
			t.Fatalf("create %s = %d %s", tc.body, code, body)
		}
		// 1 s from when the VM was made (1.5 s after the request at
		// least), at most 1 s from the answer.
		vm, _ := fx.vms.Get(t.Context(), sb.SandboxID)
		if at := *vm.ExpiresAt; at.Before(asked.Add(2500*time.Millisecond)) || at.After(answered.Add(time.Second)) || vm.ExpireAction != tc.action {
			t.Fatalf("create %s: deadline %v after the request, %v after the answer, action %q; want 1 s from when it was ready, %s",
				tc.body, at.Sub(asked), at.Sub(answered), vm.ExpireAction, tc.action)
		}
		if fx.vms.made[vm.ID].TTL != makingTTL(1) || fx.vms.made[vm.ID].TTLAction != model.TTLDelete {
			t.Fatalf("create %s: made with ttl %q %q, want %q delete", tc.body, fx.vms.made[vm.ID].TTL, fx.vms.made[vm.ID].TTLAction, makingTTL(1))
		}
	}
}

// TestMakingTTL: the deadline of a sandbox being made is one a VM takes,
// for the longest timeout too.
func TestMakingTTL(t *testing.T) {
	for _, timeout := range []int{1, 300, int(model.MaxTTL / time.Second)} {
		d, err := model.ParseTTL(makingTTL(timeout))
		if err != nil || d < time.Duration(timeout)*time.Second || d > model.MaxTTL {
			t.Errorf("makingTTL(%d) = %q: %v, %v", timeout, makingTTL(timeout), d, err)
		}
	}
}

// TestAutoResume: a paused sandbox made with autoResume wakes on the
// first request relayed to it (several at once all get through), with
// the timeout it was made with; one without it stays paused and answers
// 502; info reports the lifecycle.
func TestAutoResume(t *testing.T) {
	fx := newFixture(t)
	wakes := fx.createSandbox(t, `{"timeout":45,"autoPause":true,"autoResume":{"enabled":true}}`)
	sleeps := fx.createSandbox(t, `{"timeout":45,"autoPause":true}`)
	// secure: false still gets (and needs) a token.
	if open := fx.createSandbox(t, `{"secure":false}`); len(open.EnvdAccessToken) != 48 {
		t.Fatalf("a secure:false sandbox has token %q", open.EnvdAccessToken)
	}
	var info detailJSON
	if code, body, _ := fx.do(t, "GET", "/sandboxes/"+wakes.SandboxID, ""); code != 200 || json.Unmarshal([]byte(body), &info) != nil ||
		!info.Lifecycle.AutoResume || info.Lifecycle.OnTimeout != "pause" {
		t.Fatalf("info = %d %s", code, body)
	}
	for _, id := range []string{wakes.SandboxID, sleeps.SandboxID} {
		if code, body, _ := fx.do(t, "POST", "/sandboxes/"+id+"/pause", ""); code != 204 {
			t.Fatalf("pause = %d %s", code, body)
		}
	}
	if code := fx.health(t, sleeps.SandboxID); code != http.StatusBadGateway {
		t.Fatalf("a paused sandbox without autoResume answered %d, want 502", code)
	}
	if vm, _ := fx.vms.Get(t.Context(), sleeps.SandboxID); vm.State != model.VMPaused {
		t.Fatalf("it is %s, want still paused", vm.State)
	}
	codes := make(chan int, 4)
	for range 4 {
		go func() { codes <- fx.health(t, wakes.SandboxID) }()
	}
	for range 4 {
		if code := <-codes; code != http.StatusNoContent {
			t.Fatalf("a request to a paused autoResume sandbox answered %d, want envd's 204", code)
		}
	}
	vm, _ := fx.vms.Get(t.Context(), wakes.SandboxID)
	if vm.State != model.VMRunning || fx.vms.ttls[vm.ID] != "45s" || fx.vms.resumes != 1 {
		t.Fatalf("after traffic: %s, timeout %q, %d resumes (want running, 45s, 1)", vm.State, fx.vms.ttls[vm.ID], fx.vms.resumes)
	}

	// A wake that fails is not tried again for every request: the next
	// ones within wakeRetry are answered 502 from memory.
	if code, body, _ := fx.do(t, "POST", "/sandboxes/"+wakes.SandboxID+"/pause", ""); code != 204 {
		t.Fatalf("pause = %d %s", code, body)
	}
	fx.vms.mu.Lock()
	fx.vms.resumes, fx.vms.resumeErr = 0, errors.New("state file unreadable")
	fx.vms.mu.Unlock()
	for range 3 {
		if code, _, _ := fx.do(t, "GET", "/health", "", "E2b-Sandbox-Id", wakes.SandboxID); code != http.StatusBadGateway {
			t.Fatalf("a failed wake answered %d, want 502", code)
		}
	}
	fx.vms.mu.Lock()
	n := fx.vms.resumes
	fx.vms.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d resume attempts for 3 requests after a failure, want 1", n)
	}
}

func TestMetadataLabels(t *testing.T) {
	labels, err := MetadataLabels(map[string]string{"userId": "a@b.example", "n": ""})
	if err != nil || !reflect.DeepEqual(labels, map[string]string{"e2b.meta/userId": "a@b.example", "e2b.meta/n": ""}) {
		t.Fatalf("MetadataLabels = %v, %v", labels, err)
	}
	if back := Metadata(map[string]string{"e2b.meta/userId": "x", "other": "y"}); !reflect.DeepEqual(back, map[string]string{"userId": "x"}) {
		t.Fatalf("Metadata = %v", back)
	}
	if _, err := MetadataLabels(map[string]string{"a b": "x"}); err == nil || !strings.Contains(err.Error(), "e2b.meta/") {
		t.Fatalf("a key labels cannot hold: %v", err)
	}
	if sel := MetadataSelector(map[string]string{"a b": "x"}); sel.Matches(map[string]string{"e2b.meta/a b": "x"}) {
		t.Fatal("an impossible metadata filter matches")
	}
}

func TestProxyRouting(t *testing.T) {
	fx := newFixture(t)
	_, body, _ := fx.do(t, "POST", "/v2/sandboxes", `{}`)
	var sb sandboxJSON
	_ = json.Unmarshal([]byte(body), &sb)

	// By header: envd's /health answers 204 without a token, a Connect
	// call needs the token, which the proxy passes through.
	if code, body, _ := fx.do(t, "GET", "/health", "", "X-API-Key", "", "E2b-Sandbox-Id", sb.SandboxID, "E2b-Sandbox-Port", "49983"); code != 204 {
		t.Fatalf("envd health by header = %d %s", code, body)
	}
	code, body, _ := fx.do(t, "POST", "/process.Process/List", "{}", "X-API-Key", "", "E2b-Sandbox-Id", sb.SandboxID,
		"Connect-Protocol-Version", "1", "X-Access-Token", sb.EnvdAccessToken)
	if code != 200 || strings.TrimSpace(body) != "{}" {
		t.Fatalf("envd List by header = %d %s", code, body)
	}

	// By Host: a guest web server on port 8000.
	fx.servePort(t, 8000, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("guest web " + r.URL.Path + " host " + r.Host))
	}), false)
	host := "8000-" + sb.SandboxID + ".localhost:" + fx.port()
	if code, body, _ := fx.do(t, "GET", "/x", "", "X-API-Key", "", "Host", host); code != 200 || body != "guest web /x host "+host {
		t.Fatalf("by Host = %d %s", code, body)
	}
	if code, body, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "Host", "8001-"+sb.SandboxID+".localhost:"+fx.port()); code != 502 {
		t.Fatalf("closed guest port = %d %s, want 502", code, body)
	}
	if code, _, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "E2b-Sandbox-Id", "e2bunknown"); code != 502 {
		t.Fatalf("unknown sandbox = %d, want 502", code)
	}
	fx.do(t, "DELETE", "/sandboxes/"+sb.SandboxID, "")
	if code, _, _ := fx.do(t, "GET", "/health", "", "X-API-Key", "", "E2b-Sandbox-Id", sb.SandboxID); code != 502 {
		t.Fatalf("killed sandbox = %d, want 502", code)
	}
}

func TestParseListQuery(t *testing.T) {
	// The SDK encodes each key and value, then the whole "k=v&k=v".
	inner := url.Values{url.QueryEscape("a b"): {url.QueryEscape("x&y")}, "team": {"c"}}.Encode()
	q, err := ParseListQuery(url.Values{"metadata": {inner}, "state": {"running,paused"}, "limit": {"5"}})
	if err != nil || !reflect.DeepEqual(q.Metadata, map[string]string{"a b": "x&y", "team": "c"}) ||
		!q.States["running"] || !q.States["paused"] || q.Limit != 5 {
		t.Fatalf("ParseListQuery = %+v, %v", q, err)
	}
	for _, bad := range []url.Values{{"state": {"dead"}}, {"limit": {"0"}}, {"limit": {"101"}}, {"metadata": {"%zz"}}} {
		if _, err := ParseListQuery(bad); err == nil {
			t.Errorf("ParseListQuery(%v) accepted", bad)
		}
	}
}

// TestListenerRecorded: `banger e2b serve` survives a daemon restart (a
// new Service over the same store serves the same address), a configured
// address wins, and stop forgets it.
func TestListenerRecorded(t *testing.T) {
	fx := newFixture(t)
	st := fx.svc.Store
	fx.svc.Close()
	first := New(fx.svc.Deps)
	// The restart binds the recorded address again: a quiet port, so no
	// parallel test is handed it in between.
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.QuietPort(t)))
	got, err := first.ServeAndRecord(t.Context(), Listener{Addr: addr, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()

	again := New(fx.svc.Deps)
	if err := again.Start(t.Context(), Listener{}); err != nil {
		t.Fatal(err)
	}
	if s := again.Status(); s != got {
		t.Fatalf("after restart: %+v, want %+v", s, got)
	}
	if err := again.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := st.E2BListener(t.Context()); ok || again.Status().Listen != "" {
		t.Fatalf("after stop: recorded %v, status %+v", ok, again.Status())
	}

	third := New(fx.svc.Deps)
	defer third.Close()
	if err := third.Start(t.Context(), Listener{}); err != nil || third.Status().Listen != "" {
		t.Fatalf("start with nothing recorded: %+v, %v", third.Status(), err)
	}
	if err := third.Start(t.Context(), Listener{Addr: "127.0.0.1:0", Domain: "sb.example"}); err != nil || third.Status().Domain != "sb.example" {
		t.Fatalf("start with a configured address: %+v, %v", third.Status(), err)
	}
}

// TestProxyFullDuplex: a relayed call whose answer starts before its
// request body has all arrived (a Connect stream does this) still gets
// the rest of the body to the guest: the relay runs HTTP/1 full duplex.
func TestProxyFullDuplex(t *testing.T) {
	fx := newFixture(t)
	sb := fx.createSandbox(t, `{}`)
	// The guest answers headers at once, then echoes the whole body.
	guest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(w).Flush()
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %q %v", b, err)
	}))
	defer guest.Close()
	addr := guest.Listener.Addr().String()
	fx.vms.mu.Lock()
	fx.vms.ports[8000] = addr
	fx.vms.mu.Unlock()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", fx.url+"/upload", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "8000-" + sb.SandboxID + ".localhost:" + fx.port()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// Only now, with the answer under way, the body goes up.
	_, _ = pw.Write([]byte("late body"))
	pw.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != `got "late body" <nil>` {
		t.Fatalf("relayed upload after the answer began: %d %q", resp.StatusCode, b)
	}
}

// TestCloseFreesAddress: once Close returns, the address can be served
// again at once (`banger e2b stop` then `serve`, a daemon restart).
// Close used to leave the listener to the serving goroutine, which might
// not yet have started.
func TestCloseFreesAddress(t *testing.T) {
	fx := newFixture(t)
	fx.svc.Close()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.QuietPort(t)))
	svc := New(fx.svc.Deps)
	defer svc.Close()
	for i := range 200 {
		if _, err := svc.Serve(Listener{Addr: addr}); err != nil {
			t.Fatalf("serve %d: %v", i, err)
		}
		svc.Close()
	}
}

// TestVMGoneCutsStreams: a relayed stream to a sandbox's guest port ends
// when its VM stops or goes (VMGone, told by the VM manager), where it
// would otherwise wait on a guest that will never answer; another
// sandbox's stream goes on.
func TestVMGoneCutsStreams(t *testing.T) {
	fx := newFixture(t)
	one, other := fx.createSandbox(t, `{}`), fx.createSandbox(t, `{}`)
	// The guest port answers headers and then nothing, as a stream from a
	// guest that is gone.
	release := make(chan struct{})
	defer close(release)
	guest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("started\n"))
		_ = http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer guest.Close()
	fx.vms.mu.Lock()
	fx.vms.ports[8000] = guest.Listener.Addr().String()
	fx.vms.mu.Unlock()
	open := func(sb sandboxJSON) (*http.Response, chan error) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), "GET", fx.url+"/stream", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "8000-" + sb.SandboxID + ".localhost:" + fx.port()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "started\n" {
			t.Fatalf("stream start: %q, %v", line, err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, resp.Body)
			done <- err
		}()
		return resp, done
	}
	r1, ended1 := open(one)
	defer r1.Body.Close()
	r2, ended2 := open(other)
	defer r2.Body.Close()

	vm, err := fx.vms.Get(t.Context(), one.SandboxID)
	if err != nil {
		t.Fatal(err)
	}
	fx.svc.VMGone(vm.ID)
	select {
	case <-ended1:
	case <-time.After(20 * time.Second):
		t.Fatal("the stream to a gone VM's guest did not end")
	}
	select {
	case err := <-ended2:
		t.Fatalf("another sandbox's stream ended too: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	fx.svc.proxy.mu.Lock()
	left := len(fx.svc.proxy.conns)
	fx.svc.proxy.mu.Unlock()
	if left != 1 {
		t.Fatalf("relay connections known for %d VMs, want the other's only", left)
	}
}
