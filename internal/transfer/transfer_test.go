package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Loopback only: these tests never reach a guest.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func dial(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func token(t *testing.T) (string, []byte) {
	t.Helper()
	s, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseToken(s)
	if err != nil {
		t.Fatal(err)
	}
	return s, b
}

type result struct {
	n   int64
	err error
}

func receive(ctx context.Context, ln net.Listener, tok []byte, out io.Writer, opts ReceiveOptions) chan result {
	ch := make(chan result, 1)
	go func() {
		n, err := Receive(ctx, ln, tok, out, opts)
		ch <- result{n, err}
	}()
	return ch
}

func TestRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, sendChunk, 3*sendChunk + 12345} {
		ln := listen(t)
		hexTok, tok := token(t)
		data := make([]byte, size)
		r := rand.New(rand.NewPCG(uint64(size), 7))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		var got bytes.Buffer
		done := receive(context.Background(), ln, tok, &got, ReceiveOptions{})
		n, err := Send(context.Background(), dial(t, ln), hexTok, bytes.NewReader(data))
		if err != nil || n != int64(size) {
			t.Fatalf("size %d: Send = %d, %v", size, n, err)
		}
		res := <-done
		if res.err != nil || res.n != int64(size) || !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("size %d: Receive = %d, %v; data equal %v", size, res.n, res.err, bytes.Equal(got.Bytes(), data))
		}
		// The token is spent: the listener is closed.
		if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
			c.Close()
			t.Errorf("size %d: listener still accepts after the transfer", size)
		}
	}
}

func TestWrongAndSilentConnectionsAreRefused(t *testing.T) {
	ln := listen(t)
	hexTok, tok := token(t)
	var mu sync.Mutex
	var rejected []string
	var got bytes.Buffer
	done := receive(context.Background(), ln, tok, &got, ReceiveOptions{
		HandshakeTimeout: 300 * time.Millisecond,
		Rejected: func(_ string, err error) {
			mu.Lock()
			rejected = append(rejected, err.Error())
			mu.Unlock()
		},
	})
	// A connection that says nothing must not hold up the real sender.
	silent := dial(t, ln)
	defer silent.Close()
	// A wrong token is closed without reading the stream.
	wrong := dial(t, ln)
	bad := bytes.Repeat([]byte{0xaa}, tokenLen)
	if _, err := wrong.Write(append(bad, 0, 0, 0, 1, 'x', 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(wrong); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("wrong-token connection: %v", err)
	}
	if _, err := Send(context.Background(), dial(t, ln), hexTok, strings.NewReader("payload")); err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.err != nil || got.String() != "payload" {
		t.Fatalf("Receive = %v, %q", res.err, got.String())
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		n := len(rejected)
		joined := strings.Join(rejected, "; ")
		mu.Unlock()
		if n == 2 {
			if !strings.Contains(joined, "wrong token") || !strings.Contains(joined, "no token") {
				t.Errorf("rejections: %s", joined)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rejections after 2s: %s", joined)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

func TestSourceFailureIsNotAShortSuccess(t *testing.T) {
	ln := listen(t)
	hexTok, tok := token(t)
	done := receive(context.Background(), ln, tok, io.Discard, ReceiveOptions{})
	src := &failingReader{r: bytes.NewReader(make([]byte, sendChunk+10)), err: errors.New("file vanished")}
	if _, err := Send(context.Background(), dial(t, ln), hexTok, src); err == nil || !strings.Contains(err.Error(), "file vanished") {
		t.Errorf("Send = %v, want the source's error", err)
	}
	res := <-done
	if res.err == nil || !strings.Contains(res.err.Error(), "without its end mark") {
		t.Errorf("Receive = %d, %v, want a stream without its end mark", res.n, res.err)
	}
}

func TestCorruptFrameAndCutFrame(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"huge frame", binary.BigEndian.AppendUint32(nil, frameMax+1), "corrupt"},
		{"cut inside a frame", append(binary.BigEndian.AppendUint32(nil, 10), "abc"...), "inside a frame"},
		{"cut inside a length", []byte{0, 0}, "without its end mark"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t)
			_, tok := token(t)
			done := receive(context.Background(), ln, tok, io.Discard, ReceiveOptions{})
			c := dial(t, ln)
			c.Write(append(append([]byte{}, tok...), tc.body...))
			c.Close()
			if res := <-done; res.err == nil || !strings.Contains(res.err.Error(), tc.want) {
				t.Errorf("Receive = %v, want %q", res.err, tc.want)
			}
		})
	}
}

func TestNoSenderTimesOut(t *testing.T) {
	ln := listen(t)
	_, tok := token(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Receive(ctx, ln, tok, io.Discard, ReceiveOptions{}); err == nil || !strings.Contains(err.Error(), "no sender connected") {
		t.Errorf("Receive = %v", err)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("listener left open after the timeout")
	}
}

func TestSendCancelled(t *testing.T) {
	ln := listen(t)
	hexTok, tok := token(t)
	// The receiver may see no token at all (the sender is cut before its
	// first flush), so it waits for another sender until its own deadline.
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer rcancel()
	done := receive(rctx, ln, tok, io.Discard, ReceiveOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, 100))
		cancel()
		// A request body ends with an error when its request is cancelled.
		pw.CloseWithError(context.Canceled)
	}()
	if _, err := Send(ctx, dial(t, ln), hexTok, pr); err == nil {
		t.Error("Send succeeded after its context was cancelled")
	}
	if res := <-done; res.err == nil {
		t.Error("Receive succeeded on a cancelled send")
	}
}

func TestTokensAndAnnouncements(t *testing.T) {
	a, _ := NewToken()
	b, _ := NewToken()
	if a == b || len(a) != 64 {
		t.Errorf("tokens %q %q", a, b)
	}
	for _, bad := range []string{"", "zz", hex.EncodeToString(make([]byte, 31)), a + "00"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
	if _, err := Receive(context.Background(), listen(t), []byte("short"), io.Discard, ReceiveOptions{}); err == nil {
		t.Error("Receive took a short token")
	}
	for _, tc := range []struct {
		line      string
		port      int
		stdin, ok bool
	}{
		{Announce(40123), 40123, false, true},
		{AnnounceStdin + "\n", 0, true, true},
		{"banger-listen=0", 0, false, false},
		{"banger-listen=70000", 0, false, false},
		{"banger-listen=x", 0, false, false},
		{"banger: listen failed", 0, false, false},
	} {
		port, stdin, ok := ParseAnnounce(tc.line)
		if port != tc.port || stdin != tc.stdin || ok != tc.ok {
			t.Errorf("ParseAnnounce(%q) = %d, %v, %v", tc.line, port, stdin, ok)
		}
	}
}
