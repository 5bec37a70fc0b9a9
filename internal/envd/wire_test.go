package envd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/banger/banger/internal/envd/spec/process"
)

func TestHealthNeedsNoToken(t *testing.T) {
	ts := testServer(t)
	resp, err := ts.Client().Get(ts.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("GET /health = %d, want 204", resp.StatusCode)
	}
}

func TestAccessTokenRequired(t *testing.T) {
	ts := testServer(t)
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"missing", "", 401},
		{"wrong", "nope", 401},
		{"prefix", testToken[:5], 401},
		{"right", testToken, 200},
	} {
		code, _, raw := rawUnary(t, ts, "/process.Process/List", "{}", tc.token)
		if code != tc.want {
			t.Errorf("%s token: status %d (%s), want %d", tc.name, code, raw, tc.want)
		}
	}
	// Streams, /files and unknown routes are guarded too.
	resp, _ := rawStream(t, ts, "/process.Process/Start", `{"process":{"cmd":"true"}}`, "")
	if resp.StatusCode != 401 {
		t.Errorf("Start without token: %d, want 401", resp.StatusCode)
	}
	for _, path := range []string{"/files?path=/etc/hostname", "/nope"} {
		r, err := ts.Client().Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != 401 {
			t.Errorf("GET %s without token: %d, want 401", path, r.StatusCode)
		}
	}
}

func TestTokenOK(t *testing.T) {
	if TokenOK("", "") || TokenOK("a", "") || TokenOK("", "a") || TokenOK("ab", "a") || !TokenOK("ab", "ab") {
		t.Fatal("TokenOK disagrees with equality of non-empty tokens")
	}
}

func TestSignature(t *testing.T) {
	// Vectors computed with: printf %s 'PATH:OP:USER:TOKEN[:EXP]' | openssl dgst -sha256 -binary | base64
	if got, want := Signature("/home/user/a.txt", "read", "user", "tok", 0), "v1_p0WqJQYCLtO6YX+e4h7VbpybRsdJbMbIw7clYpulIJk"; got != want {
		t.Errorf("Signature = %s, want %s", got, want)
	}
	sig := Signature("/home/user/a.txt", "write", "", "tok", 1700000000)
	if want := "v1_QdtRqpz7xKNXzcs4IguYpySRPZbSGp8b64s9hqOl+wo"; sig != want {
		t.Errorf("Signature with expiry = %s, want %s", sig, want)
	}
	before := time.Unix(1700000000, 0)
	if !SignatureOK("tok", sig, "/home/user/a.txt", "write", "", 1700000000, before) {
		t.Error("valid signature refused")
	}
	for name, ok := range map[string]bool{
		"expired":   SignatureOK("tok", sig, "/home/user/a.txt", "write", "", 1700000000, before.Add(time.Second)),
		"operation": SignatureOK("tok", sig, "/home/user/a.txt", "read", "", 1700000000, before),
		"path":      SignatureOK("tok", sig, "/home/user/b.txt", "write", "", 1700000000, before),
		"user":      SignatureOK("tok", sig, "/home/user/a.txt", "write", "root", 1700000000, before),
		"token":     SignatureOK("other", sig, "/home/user/a.txt", "write", "", 1700000000, before),
		"no prefix": SignatureOK("tok", strings.TrimPrefix(sig, "v1_"), "/home/user/a.txt", "write", "", 1700000000, before),
		"no token":  SignatureOK("", Signature("/a", "read", "", "", 0), "/a", "read", "", 0, before),
	} {
		if ok {
			t.Errorf("%s: signature accepted", name)
		}
	}
}

// TestStreamWire checks the bytes the SDK parses: envelopes, the event
// order, base64 output, exit code present when non-zero, and the
// end-of-stream frame.
func TestStreamWire(t *testing.T) {
	ts := testServer(t)
	resp, frames := rawStream(t, ts, "/process.Process/Start",
		`{"process":{"cmd":"/bin/sh","args":["-c","printf hi; printf err >&2; exit 3"]},"stdin":false}`, testToken)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/connect+json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if len(frames) < 4 {
		t.Fatalf("got %d frames, want start, data..., end, end-of-stream", len(frames))
	}
	last := frames[len(frames)-1]
	if last.flags != 0x02 || string(last.body) != "{}" {
		t.Fatalf("end-of-stream frame = flags %#x %s, want 0x02 {}", last.flags, last.body)
	}
	type event struct {
		Event struct {
			Start *struct {
				Pid json.Number `json:"pid"`
			} `json:"start"`
			Data *struct {
				Stdout *string `json:"stdout"`
				Stderr *string `json:"stderr"`
			} `json:"data"`
			End map[string]any `json:"end"`
		} `json:"event"`
	}
	var evs []event
	for _, f := range frames[:len(frames)-1] {
		if f.flags != 0 {
			t.Fatalf("message frame with flags %#x", f.flags)
		}
		var e event
		if err := json.Unmarshal(f.body, &e); err != nil {
			t.Fatalf("frame %s: %v", f.body, err)
		}
		evs = append(evs, e)
	}
	if evs[0].Event.Start == nil || evs[0].Event.Start.Pid == "" {
		t.Fatalf("first event %s is not start{pid}", frames[0].body)
	}
	var stdout, stderr string
	for _, e := range evs[1 : len(evs)-1] {
		if e.Event.Data == nil {
			continue
		}
		if e.Event.Data.Stdout != nil {
			b, err := base64.StdEncoding.DecodeString(*e.Event.Data.Stdout)
			if err != nil {
				t.Fatalf("stdout not base64: %v", err)
			}
			stdout += string(b)
		}
		if e.Event.Data.Stderr != nil {
			b, _ := base64.StdEncoding.DecodeString(*e.Event.Data.Stderr)
			stderr += string(b)
		}
	}
	if stdout != "hi" || stderr != "err" {
		t.Errorf("stdout %q stderr %q, want hi, err", stdout, stderr)
	}
	end := evs[len(evs)-1].Event.End
	if end == nil || end["exitCode"] != float64(3) || end["exited"] != true || end["status"] != "exit status 3" {
		t.Errorf("end event = %s", frames[len(frames)-2].body)
	}

	// Exit code 0 is a zero value: protojson leaves it out.
	_, frames = rawStream(t, ts, "/process.Process/Start", `{"process":{"cmd":"true"}}`, testToken)
	endBody := string(frames[len(frames)-2].body)
	if !strings.Contains(endBody, `"end"`) || strings.Contains(endBody, "exitCode") || strings.Contains(endBody, `"error"`) {
		t.Errorf("end of a successful process = %s, want end without exitCode", endBody)
	}
}

func TestStreamEndsWithError(t *testing.T) {
	ts := testServer(t)
	resp, frames := rawStream(t, ts, "/process.Process/Connect", `{"process":{"pid":999999}}`, testToken)
	if resp.StatusCode != 200 || len(frames) != 1 || frames[0].flags != 0x02 {
		t.Fatalf("status %d frames %v, want 200 with one end-of-stream frame", resp.StatusCode, frames)
	}
	var end struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(frames[0].body, &end); err != nil {
		t.Fatal(err)
	}
	if end.Error.Code != "not_found" || !strings.Contains(end.Error.Message, "999999") {
		t.Fatalf("end-of-stream = %s, want not_found naming the pid", frames[0].body)
	}
}

func TestProtoJSONShapes(t *testing.T) {
	ts := testServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "five")
	if err := os.WriteFile(file, []byte("12345"), 0o640); err != nil {
		t.Fatal(err)
	}
	// No processes: the empty list is a zero value and left out.
	if code, _, raw := rawUnary(t, ts, "/process.Process/List", "{}", testToken); code != 200 || strings.TrimSpace(raw) != "{}" {
		t.Errorf("List = %d %s, want 200 {}", code, raw)
	}
	code, m, raw := rawUnary(t, ts, "/filesystem.Filesystem/Stat", `{"path":"`+file+`"}`, testToken)
	if code != 200 {
		t.Fatalf("Stat = %d %s", code, raw)
	}
	e := m["entry"].(map[string]any)
	if e["size"] != "5" {
		t.Errorf("size = %#v, want the string \"5\" (int64 as string)", e["size"])
	}
	if e["type"] != "FILE_TYPE_FILE" || e["mode"] != float64(0o640) || e["permissions"] != "-rw-r-----" || e["name"] != "five" {
		t.Errorf("entry = %s", raw)
	}
	if _, err := time.Parse(time.RFC3339Nano, e["modifiedTime"].(string)); err != nil {
		t.Errorf("modifiedTime %v: %v", e["modifiedTime"], err)
	}
	if _, ok := e["symlinkTarget"]; ok {
		t.Errorf("symlinkTarget present for a plain file: %s", raw)
	}
	code, m, raw = rawUnary(t, ts, "/filesystem.Filesystem/Stat", `{"path":"`+dir+`/missing"}`, testToken)
	if code != 404 || m["code"] != "not_found" {
		t.Errorf("Stat of a missing file = %d %s, want 404 not_found", code, raw)
	}
}

// TestReconfigure: a new token replaces the old one at once (requests
// with the old one are refused) and a new default environment reaches
// the next command.
func TestReconfigure(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Token: "old-token-0123456789", DefaultUser: me.Username, Env: map[string]string{"A": "old"}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer func() { ts.Close(); s.Close() }()
	if err := s.Reconfigure("", nil); err == nil {
		t.Fatal("Reconfigure with an empty token succeeded")
	}
	if err := s.Reconfigure(testToken, map[string]string{"A": "new"}); err != nil {
		t.Fatal(err)
	}
	if code, _, raw := rawUnary(t, ts, "/process.Process/List", "{}", "old-token-0123456789"); code != 401 {
		t.Fatalf("the old token after Reconfigure: %d %s", code, raw)
	}
	pc, _ := clients(ts)
	st, err := pc.Start(context.Background(), connect.NewRequest(&pb.StartRequest{Process: shCmd(`printf %s "$A"`)}))
	if err != nil {
		t.Fatal(err)
	}
	_, out, end := collect(t, st.Receive, func() *pb.ProcessEvent { return st.Msg().Event }, st.Err)
	if out != "new" || end.GetExitCode() != 0 {
		t.Fatalf("after Reconfigure: output %q, end %v", out, end)
	}
}
