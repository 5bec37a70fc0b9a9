package envd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/user"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/banger/banger/internal/envd/spec/filesystem/filesystemconnect"
	"github.com/banger/banger/internal/envd/spec/process/processconnect"
)

const testToken = "test-token-0123456789"

// testServer runs envd on 127.0.0.1 with commands as the test's own user.
func testServer(t *testing.T, mutate ...func(*Config)) *httptest.Server {
	t.Helper()
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Token: testToken, DefaultUser: me.Username, Keepalive: time.Minute}
	for _, m := range mutate {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		s.Close()
	})
	return ts
}

func clients(ts *httptest.Server) (processconnect.ProcessClient, filesystemconnect.FilesystemClient) {
	opts := []connect.ClientOption{connect.WithInterceptors(accessToken(testToken)), connect.WithProtoJSON()}
	return processconnect.NewProcessClient(ts.Client(), ts.URL, opts...),
		filesystemconnect.NewFilesystemClient(ts.Client(), ts.URL, opts...)
}

// frame is one Connect streaming envelope.
type frame struct {
	flags byte
	body  []byte
}

// readFrames decodes Connect envelopes (flag byte, big-endian uint32
// length, payload) until EOF.
func readFrames(t *testing.T, r io.Reader) []frame {
	t.Helper()
	var out []frame
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err == io.EOF {
			return out
		} else if err != nil {
			t.Fatalf("envelope header: %v", err)
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(r, body); err != nil {
			t.Fatalf("envelope body: %v", err)
		}
		out = append(out, frame{hdr[0], body})
	}
}

// envelope encodes one request message as a Connect envelope.
func envelope(msg string) []byte {
	var b bytes.Buffer
	b.WriteByte(0)
	_ = binary.Write(&b, binary.BigEndian, uint32(len(msg)))
	b.WriteString(msg)
	return b.Bytes()
}

// rawStream posts a server-streaming Connect JSON call as the SDK does.
func rawStream(t *testing.T, ts *httptest.Server, path, msg, token string) (*http.Response, []frame) {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.URL+path, bytes.NewReader(envelope(msg)))
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	if token != "" {
		req.Header.Set("X-Access-Token", token)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return resp, nil
	}
	return resp, readFrames(t, resp.Body)
}

// rawUnary posts a unary Connect JSON call and decodes the JSON answer.
func rawUnary(t *testing.T, ts *httptest.Server, path, msg, token string) (int, map[string]any, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.URL+path, strings.NewReader(msg))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connect-Protocol-Version", "1")
	if token != "" {
		req.Header.Set("X-Access-Token", token)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m, string(raw)
}
