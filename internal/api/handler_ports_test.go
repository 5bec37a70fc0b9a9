package api

import (
	"context"
	"reflect"
	"testing"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
)

// fakePorts keeps forwards in a slice and records what it was given.
type fakePorts struct {
	Service
	fwds []model.Forward
	last string
}

func (f *fakePorts) AddPort(_ context.Context, ref string, req AddPortRequest) (model.Forward, error) {
	f.last = ref + " " + req.Spec
	if req.Spec == "bad" {
		return model.Forward{}, errdefs.Errorf(errdefs.CodeInvalid, "port %q", req.Spec)
	}
	fw := model.Forward{VMID: ref, HostAddr: "127.0.0.1", HostPort: 40000, GuestPort: 8000, Proto: "tcp"}
	f.fwds = append(f.fwds, fw)
	return fw, nil
}

func (f *fakePorts) RemovePort(_ context.Context, ref, port string) error {
	f.last = ref + " " + port
	if len(f.fwds) == 0 {
		return errdefs.NotFound("port", port)
	}
	f.fwds = f.fwds[1:]
	return nil
}

func (f *fakePorts) ListPorts(_ context.Context, ref string) ([]model.Forward, error) {
	return f.fwds, nil
}

func TestPortRoutes(t *testing.T) {
	svc := &fakePorts{}
	c, _ := serve(t, svc)
	ctx := context.Background()
	fw, err := c.AddPort(ctx, "web", AddPortRequest{Spec: "0:8000"})
	if err != nil || fw.HostPort != 40000 || svc.last != "web 0:8000" {
		t.Fatalf("AddPort = %+v, %v (service got %q)", fw, err, svc.last)
	}
	if _, err := c.AddPort(ctx, "web", AddPortRequest{Spec: "bad"}); errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("AddPort bad: %v", err)
	}
	if got, err := c.ListPorts(ctx, "web"); err != nil || !reflect.DeepEqual(got, []model.Forward{fw}) {
		t.Fatalf("ListPorts = %+v, %v", got, err)
	}
	// An address with the port travels escaped in the path.
	if err := c.RemovePort(ctx, "web", "[::1]:40000"); err != nil || svc.last != "web [::1]:40000" {
		t.Fatalf("RemovePort = %v (service got %q)", err, svc.last)
	}
	if err := c.RemovePort(ctx, "web", "40000"); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Fatalf("RemovePort of none: %v", err)
	}
}
