package envd

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/banger/banger/internal/envd/spec/filesystem"
)

func TestFilesystemCalls(t *testing.T) {
	ts := testServer(t)
	_, fc := clients(ts)
	ctx := context.Background()
	dir := t.TempDir()

	mk, err := fc.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: dir + "/a/b"}))
	if err != nil || mk.Msg.Entry.Type != fspb.FileType_FILE_TYPE_DIRECTORY || mk.Msg.Entry.Path != dir+"/a/b" {
		t.Fatalf("MakeDir = %v, %v", mk, err)
	}
	if _, err := fc.MakeDir(ctx, connect.NewRequest(&fspb.MakeDirRequest{Path: dir + "/a/b"})); connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("MakeDir again: %v, want already_exists", err)
	}
	if err := os.WriteFile(dir+"/a/b/f", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b/f", dir+"/a/link"); err != nil {
		t.Fatal(err)
	}
	ls, err := fc.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir + "/a"}))
	if err != nil || len(ls.Msg.Entries) != 2 {
		t.Fatalf("ListDir depth 1 = %v, %v", ls, err)
	}
	for _, e := range ls.Msg.Entries {
		if e.Name == "link" && (e.Type != fspb.FileType_FILE_TYPE_SYMLINK || e.GetSymlinkTarget() != "b/f") {
			t.Errorf("symlink entry = %v", e)
		}
	}
	ls, err = fc.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir + "/a", Depth: 2}))
	if err != nil || len(ls.Msg.Entries) != 3 {
		t.Fatalf("ListDir depth 2 = %v, %v", ls, err)
	}
	if _, err := fc.ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: dir + "/a/b/f"})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("ListDir of a file: %v", err)
	}
	mv, err := fc.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: dir + "/a/b/f", Destination: dir + "/c/d/g"}))
	if err != nil || mv.Msg.Entry.Name != "g" || mv.Msg.Entry.Size != 1 {
		t.Fatalf("Move = %v, %v", mv, err)
	}
	if _, err := fc.Move(ctx, connect.NewRequest(&fspb.MoveRequest{Source: dir + "/nope", Destination: dir + "/x"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("Move of a missing entry: %v", err)
	}
	if _, err := fc.Remove(ctx, connect.NewRequest(&fspb.RemoveRequest{Path: dir + "/c"})); err != nil {
		t.Fatal(err)
	}
	if _, err := fc.Stat(ctx, connect.NewRequest(&fspb.StatRequest{Path: dir + "/c/d/g"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("Stat after Remove: %v", err)
	}
}

func TestWatchDir(t *testing.T) {
	ts := testServer(t)
	_, fc := clients(ts)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	if err := os.Mkdir(dir+"/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	st, err := fc.WatchDir(ctx, connect.NewRequest(&fspb.WatchDirRequest{Path: dir, Recursive: true}))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() || st.Msg().GetStart() == nil {
		t.Fatalf("first event: %v %v", st.Msg(), st.Err())
	}
	if err := os.WriteFile(dir+"/sub/new.txt", []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	seen := map[fspb.EventType]bool{}
	for st.Receive() {
		ev := st.Msg().GetFilesystem()
		if ev == nil || ev.Name != "sub/new.txt" {
			continue
		}
		seen[ev.Type] = true
		if seen[fspb.EventType_EVENT_TYPE_CREATE] && seen[fspb.EventType_EVENT_TYPE_WRITE] {
			break
		}
	}
	if !seen[fspb.EventType_EVENT_TYPE_CREATE] || !seen[fspb.EventType_EVENT_TYPE_WRITE] {
		t.Fatalf("events for sub/new.txt: %v (err %v)", seen, st.Err())
	}

	// The polling form.
	cw, err := fc.CreateWatcher(ctx, connect.NewRequest(&fspb.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	id := cw.Msg.WatcherId
	if err := os.Remove(dir + "/sub/new.txt"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/top", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var names []string
	for deadline := time.Now().Add(5 * time.Second); len(names) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		evs, err := fc.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Msg.Events {
			names = append(names, e.Name)
		}
	}
	if len(names) == 0 || names[0] != "top" {
		t.Fatalf("polled events = %v, want top (the non-recursive watcher ignores sub/)", names)
	}
	if _, err := fc.RemoveWatcher(ctx, connect.NewRequest(&fspb.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	if _, err := fc.GetWatcherEvents(ctx, connect.NewRequest(&fspb.GetWatcherEventsRequest{WatcherId: id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("events of a removed watcher: %v", err)
	}
}

func filesReq(t *testing.T, method, u string, body io.Reader, contentType string, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, u, body)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestFilesUploadDownload(t *testing.T) {
	ts := testServer(t)
	dir := t.TempDir()
	tok := map[string]string{"X-Access-Token": testToken}
	q := func(v url.Values) string { return ts.URL + "/files?" + v.Encode() }

	// Multipart, one part per file named by its file name.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	for name, content := range map[string]string{dir + "/m/one": "1", dir + "/m/two": "22"} {
		w, _ := mw.CreateFormFile("file", name)
		_, _ = w.Write([]byte(content))
	}
	mw.Close()
	code, body := filesReq(t, "POST", q(url.Values{}), &mp, mw.FormDataContentType(), tok)
	var written []writtenEntry
	if code != 200 || json.Unmarshal(body, &written) != nil || len(written) != 2 || written[0].Type != "file" {
		t.Fatalf("multipart POST = %d %s", code, body)
	}
	if b, _ := os.ReadFile(dir + "/m/two"); string(b) != "22" {
		t.Fatalf("two = %q", b)
	}

	// Octet-stream with gzip, binary content.
	blob := make([]byte, 1<<20)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(blob)
	zw.Close()
	code, body = filesReq(t, "POST", q(url.Values{"path": {dir + "/bin/blob"}}), &gz, "application/octet-stream",
		map[string]string{"X-Access-Token": testToken, "Content-Encoding": "gzip"})
	if code != 200 {
		t.Fatalf("octet-stream POST = %d %s", code, body)
	}
	code, body = filesReq(t, "GET", q(url.Values{"path": {dir + "/bin/blob"}}), nil, "", tok)
	if code != 200 || !bytes.Equal(body, blob) {
		t.Fatalf("GET blob = %d, %d bytes", code, len(body))
	}
	if entries, _ := os.ReadDir(dir + "/bin"); len(entries) != 1 {
		t.Errorf("upload left temporary files: %v", entries)
	}

	// Errors: a missing file, a directory, a raw upload without a path.
	if code, body = filesReq(t, "GET", q(url.Values{"path": {dir + "/missing"}}), nil, "", tok); code != 404 {
		t.Errorf("GET missing = %d %s", code, body)
	}
	if code, _ = filesReq(t, "GET", q(url.Values{"path": {dir}}), nil, "", tok); code != 400 {
		t.Errorf("GET dir = %d", code)
	}
	if code, _ = filesReq(t, "POST", q(url.Values{}), bytes.NewReader([]byte("x")), "application/octet-stream", tok); code != 400 {
		t.Errorf("raw POST without path = %d", code)
	}

	// A signed URL works without the token; a wrong or expired one does not.
	exp := time.Now().Add(time.Minute).Unix()
	signed := url.Values{"path": {dir + "/m/one"}, "signature": {Signature(dir+"/m/one", "read", "", testToken, exp)},
		"signature_expiration": {strconv.FormatInt(exp, 10)}}
	if code, body = filesReq(t, "GET", q(signed), nil, "", nil); code != 200 || string(body) != "1" {
		t.Errorf("signed GET = %d %s", code, body)
	}
	signed.Set("signature", Signature(dir+"/m/one", "write", "", testToken, exp))
	if code, _ = filesReq(t, "GET", q(signed), nil, "", nil); code != 401 {
		t.Errorf("GET signed for write = %d, want 401", code)
	}
	old := time.Now().Add(-time.Minute).Unix()
	signed.Set("signature", Signature(dir+"/m/one", "read", "", testToken, old))
	signed.Set("signature_expiration", strconv.FormatInt(old, 10))
	if code, _ = filesReq(t, "GET", q(signed), nil, "", nil); code != 401 {
		t.Errorf("expired signature = %d, want 401", code)
	}
}

func TestResolve(t *testing.T) {
	a := account{home: "/home/user"}
	for in, want := range map[string]string{
		"":          "/home/user",
		"~":         "/home/user",
		"~/x":       "/home/user/x",
		"x/../y":    "/home/user/y",
		"/etc/../a": "/a",
	} {
		if got := resolve(in, a); got != want {
			t.Errorf("resolve(%q) = %q, want %q", in, got, want)
		}
	}
	if filepath.IsAbs(resolve("rel", account{home: "/"})) != true {
		t.Error("relative path under / not absolute")
	}
}
