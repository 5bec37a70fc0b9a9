package api

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Guest file operations (files.go).

func filesPath(ref, rest string) string { return "/v1/vms/" + esc(ref) + "/files" + rest }

// ReadFile copies a guest file's bytes (a range when asked) to w.
func (c *Client) ReadFile(ctx context.Context, ref string, req FileReadRequest, w io.Writer) error {
	q := url.Values{"path": {req.Path}}
	if req.Offset > 0 {
		q.Set("offset", strconv.FormatInt(req.Offset, 10))
	}
	if req.Length > 0 {
		q.Set("length", strconv.FormatInt(req.Length, 10))
	}
	return c.raw(ctx, "GET", filesPath(ref, "/content"), q, nil, w)
}

// WriteFile streams body into a guest file, atomically.
func (c *Client) WriteFile(ctx context.Context, ref string, req FileWriteRequest, body io.Reader) (FileInfo, error) {
	q := url.Values{"path": {req.Path}}
	if req.Mode != nil {
		q.Set("mode", strconv.FormatUint(uint64(*req.Mode), 8))
	}
	if req.Parents {
		q.Set("parents", "true")
	}
	return c.upload(ctx, filesPath(ref, "/content"), q, "application/octet-stream", body)
}

func (c *Client) upload(ctx context.Context, path string, q url.Values, contentType string, body io.Reader) (FileInfo, error) {
	resp, err := c.do(ctx, "PUT", path, q, body, http.Header{"Content-Type": {contentType}})
	if err != nil {
		return FileInfo{}, err
	}
	defer resp.Body.Close()
	var v FileInfo
	return v, decodeAnswer(resp.Body, "PUT "+path, &v)
}

// StatFile describes a guest path (a final symlink is not followed).
func (c *Client) StatFile(ctx context.Context, ref, path string) (FileInfo, error) {
	var v FileInfo
	return v, c.call(ctx, "GET", filesPath(ref, "/stat"), url.Values{"path": {path}}, nil, &v)
}

// ListFiles lists a guest directory down to depth levels.
func (c *Client) ListFiles(ctx context.Context, ref, path string, depth int) ([]FileInfo, error) {
	q := url.Values{"path": {path}}
	if depth > 0 {
		q.Set("depth", strconv.Itoa(depth))
	}
	var v []FileInfo
	return v, c.call(ctx, "GET", filesPath(ref, "/list"), q, nil, &v)
}

// MakeDir makes a guest directory and its parents.
func (c *Client) MakeDir(ctx context.Context, ref, path string) (FileInfo, error) {
	var v FileInfo
	return v, c.call(ctx, "POST", filesPath(ref, "/mkdir"), url.Values{"path": {path}}, nil, &v)
}

// MoveFile renames a guest path.
func (c *Client) MoveFile(ctx context.Context, ref, from, to string) (FileInfo, error) {
	var v FileInfo
	return v, c.call(ctx, "POST", filesPath(ref, "/move"), url.Values{"from": {from}, "to": {to}}, nil, &v)
}

// RemoveFile removes a guest path (a tree with recursive).
func (c *Client) RemoveFile(ctx context.Context, ref, path string, recursive bool) error {
	q := url.Values{"path": {path}}
	if recursive {
		q.Set("recursive", "true")
	}
	return c.call(ctx, "DELETE", filesPath(ref, ""), q, nil, nil)
}

// ReadArchive copies a tar of a guest directory's contents to w.
func (c *Client) ReadArchive(ctx context.Context, ref, path string, w io.Writer) error {
	return c.raw(ctx, "GET", filesPath(ref, "/archive"), url.Values{"path": {path}}, nil, w)
}

// WriteArchive unpacks a tar stream into a guest directory.
func (c *Client) WriteArchive(ctx context.Context, ref, path string, tar io.Reader) (FileInfo, error) {
	return c.upload(ctx, filesPath(ref, "/archive"), url.Values{"path": {path}}, "application/x-tar", tar)
}
