package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/banger/banger/internal/errdefs"
)

// fakeFiles keeps guest files in a map and records the last call.
type fakeFiles struct {
	Service
	files map[string][]byte
	last  string
}

func (f *fakeFiles) ReadFile(_ context.Context, ref string, req FileReadRequest, w io.Writer) error {
	b, ok := f.files[req.Path]
	if !ok {
		return errdefs.NotFound("file", req.Path)
	}
	if req.Path == "/late" {
		_, _ = w.Write(b)
		return errdefs.Errorf(errdefs.CodeUnavailable, "guest connection lost")
	}
	b = b[min(req.Offset, int64(len(b))):]
	if req.Length > 0 {
		b = b[:min(req.Length, int64(len(b)))]
	}
	_, err := w.Write(b)
	return err
}

func (f *fakeFiles) WriteFile(_ context.Context, ref string, req FileWriteRequest, body io.Reader) (FileInfo, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return FileInfo{}, err
	}
	f.files[req.Path] = b
	mode := uint32(0o644)
	if req.Mode != nil {
		mode = *req.Mode
	}
	f.last = ref
	if req.Parents {
		f.last += " parents"
	}
	return FileInfo{Path: req.Path, RawPath: []byte(req.Path), Type: FileTypeFile, Size: int64(len(b)), Mode: mode}, nil
}

func (f *fakeFiles) StatFile(_ context.Context, ref, path string) (FileInfo, error) {
	if _, ok := f.files[path]; !ok {
		return FileInfo{}, errdefs.NotFound("file", path)
	}
	return FileInfo{Path: path, Type: FileTypeFile}, nil
}

func (f *fakeFiles) ListFiles(_ context.Context, ref, path string, depth int) ([]FileInfo, error) {
	f.last = path + " " + string(rune('0'+depth))
	return nil, nil
}

func (f *fakeFiles) MakeDir(_ context.Context, ref, path string) (FileInfo, error) {
	return FileInfo{Path: path, Type: FileTypeDir}, nil
}

func (f *fakeFiles) MoveFile(_ context.Context, ref, from, to string) (FileInfo, error) {
	f.files[to] = f.files[from]
	delete(f.files, from)
	return FileInfo{Path: to}, nil
}

func (f *fakeFiles) RemoveFile(_ context.Context, ref, path string, recursive bool) error {
	if recursive {
		f.last = "rm -r " + path
	}
	return nil
}

func (f *fakeFiles) ReadArchive(_ context.Context, ref, path string, w io.Writer) error {
	_, err := io.WriteString(w, "tar of "+path)
	return err
}

func (f *fakeFiles) WriteArchive(_ context.Context, ref, path string, tar io.Reader) (FileInfo, error) {
	b, _ := io.ReadAll(tar)
	f.files[path] = b
	return FileInfo{Path: path, Type: FileTypeDir}, nil
}

func TestFileRoutes(t *testing.T) {
	f := &fakeFiles{files: map[string][]byte{"/late": []byte("partial")}}
	c, _ := serve(t, f)
	ctx := context.Background()
	odd := "/root/new\nline \xff"
	mode := uint32(0o755)
	info, err := c.WriteFile(ctx, "vm", FileWriteRequest{Path: odd, Mode: &mode, Parents: true}, strings.NewReader("0123456789"))
	if err != nil || info.Mode != 0o755 || info.Size != 10 || string(info.RawPath) != odd || f.last != "vm parents" {
		t.Fatalf("write: %+v, %v (last %q)", info, err, f.last)
	}
	var buf bytes.Buffer
	if err := c.ReadFile(ctx, "vm", FileReadRequest{Path: odd, Offset: 2, Length: 3}, &buf); err != nil || buf.String() != "234" {
		t.Fatalf("read = %q, %v", buf.String(), err)
	}
	// A failure after bytes were sent arrives in the trailer.
	buf.Reset()
	err = c.ReadFile(ctx, "vm", FileReadRequest{Path: "/late"}, &buf)
	if errdefs.CodeOf(err) != errdefs.CodeUnavailable || buf.String() != "partial" {
		t.Fatalf("late failure: %q, %v", buf.String(), err)
	}
	if err := c.ReadFile(ctx, "vm", FileReadRequest{Path: "/none"}, io.Discard); !errdefs.IsNotFound(err) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := c.StatFile(ctx, "vm", "/none"); !errdefs.IsNotFound(err) {
		t.Fatalf("stat missing: %v", err)
	}
	if ents, err := c.ListFiles(ctx, "vm", "/root", 3); err != nil || ents == nil || f.last != "/root 3" {
		t.Fatalf("list: %v, %v, %q", ents, err, f.last)
	}
	if info, err := c.MakeDir(ctx, "vm", "/d"); err != nil || info.Type != FileTypeDir {
		t.Fatalf("mkdir: %+v, %v", info, err)
	}
	if info, err := c.MoveFile(ctx, "vm", odd, "/moved"); err != nil || info.Path != "/moved" || f.files["/moved"] == nil {
		t.Fatalf("move: %+v, %v", info, err)
	}
	if err := c.RemoveFile(ctx, "vm", "/d", true); err != nil || f.last != "rm -r /d" {
		t.Fatalf("remove: %v, %q", err, f.last)
	}
	buf.Reset()
	if err := c.ReadArchive(ctx, "vm", "/d", &buf); err != nil || buf.String() != "tar of /d" {
		t.Fatalf("archive: %q, %v", buf.String(), err)
	}
	if _, err := c.WriteArchive(ctx, "vm", "/x", strings.NewReader("tarball")); err != nil || string(f.files["/x"]) != "tarball" {
		t.Fatalf("unpack: %v", err)
	}
}

func TestFileRoutesRejectBadQueries(t *testing.T) {
	f := &fakeFiles{files: map[string][]byte{}}
	_, raw := serve(t, f)
	for _, tc := range []struct{ method, url string }{
		{"GET", "/v1/vms/vm/files/content?path=/x&offset=-1"},
		{"GET", "/v1/vms/vm/files/content?path=/x&length=z"},
		{"PUT", "/v1/vms/vm/files/content?path=/x&mode=9"},
		{"PUT", "/v1/vms/vm/files/content?path=/x&parents=maybe"},
		{"GET", "/v1/vms/vm/files/list?path=/x&depth=-2"},
		{"DELETE", "/v1/vms/vm/files?path=/x&recursive=2"},
	} {
		req, _ := http.NewRequest(tc.method, "http://banger"+tc.url, nil)
		resp, err := raw.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		e := readError(resp)
		resp.Body.Close()
		var ae *errdefs.Error
		if resp.StatusCode != 400 || !errors.As(e, &ae) || ae.Code != errdefs.CodeInvalid {
			t.Errorf("%s %s: %d %v", tc.method, tc.url, resp.StatusCode, e)
		}
	}
}
