package api

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/testenv"
)

// fakeDial dials a local "guest port" that answers what it read once its
// input ended, and refuses other ports.
type fakeDial struct {
	Service
	addr string
	got  string
}

func (f *fakeDial) DialVM(ctx context.Context, ref string, port int) (net.Conn, error) {
	f.got = ref
	if port != 8000 {
		return nil, errdefs.Errorf(errdefs.CodeConflict, "nothing listens on port %d of vm %s", port, ref)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", f.addr)
}

// TestDialRoute: a dialled port carries bytes both ways and passes the
// client's half-close on (the guest side answers only after its input
// ended); a refused port and a bad port are API errors, not upgrades.
func TestDialRoute(t *testing.T) {
	addr := testenv.Serve(testenv.Listen(t, "tcp", "127.0.0.1:0"), func(c net.Conn) {
		b, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("got:"), b...))
	})
	svc := &fakeDial{addr: addr}
	c, raw := serve(t, svc)
	ctx := context.Background()

	conn, err := c.DialVM(ctx, "web", 8000)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "got:hello" || svc.got != "web" {
		t.Fatalf("dial answer %q, %v (service got %q)", b, err, svc.got)
	}

	if _, err := c.DialVM(ctx, "web", 9); errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("dial a refused port: %v", err)
	}
	if _, err := c.DialVM(ctx, "web", 70000); errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("dial port 70000: %v", err)
	}
	// Without the upgrade headers the route refuses.
	if code, _, _ := rawDo(t, raw, "POST", "/v1/vms/web/dial?port=8000", ""); code != http.StatusBadRequest {
		t.Fatalf("dial without upgrade: status %d", code)
	}
}
