package envd

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func sha256Sum(s string) []byte {
	sum := sha256.Sum256([]byte(s))
	return sum[:]
}

// fileAccess authorizes a /files request (token, or a signature for the
// operation) and resolves its user; it answers the error itself.
func (s *Server) fileAccess(w http.ResponseWriter, r *http.Request, operation string) (account, bool) {
	q := r.URL.Query()
	name := q.Get("username")
	if sig := q.Get("signature"); sig != "" {
		var expiry int64
		if v := q.Get("signature_expiration"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				httpError(w, http.StatusBadRequest, "signature_expiration: "+err.Error())
				return account{}, false
			}
			expiry = n
		}
		if !SignatureOK(s.token(), sig, q.Get("path"), operation, name, expiry, time.Now()) {
			httpError(w, http.StatusUnauthorized, "invalid or expired signature")
			return account{}, false
		}
	} else if !TokenOK(s.token(), r.Header.Get("X-Access-Token")) {
		httpError(w, http.StatusUnauthorized, "missing or wrong X-Access-Token")
		return account{}, false
	}
	if name == "" {
		n, err := s.requestUser(r.Header)
		if err != nil {
			httpError(w, http.StatusBadRequest, err.Error())
			return account{}, false
		}
		name = n
	}
	a, err := lookupAccount(name)
	if err != nil {
		httpError(w, http.StatusUnauthorized, err.Error())
		return account{}, false
	}
	return a, true
}

// getFile answers a file's bytes (ranges allowed).
func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	a, ok := s.fileAccess(w, r, "read")
	if !ok {
		return
	}
	p := r.URL.Query().Get("path")
	if p == "" {
		httpError(w, http.StatusBadRequest, "path is required")
		return
	}
	path := resolve(p, a)
	f, err := os.Open(path)
	if err != nil {
		fileError(w, path, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fileError(w, path, err)
		return
	}
	if fi.IsDir() {
		httpError(w, http.StatusBadRequest, path+" is a directory")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": fi.Name()}))
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

func fileError(w http.ResponseWriter, path string, err error) {
	switch {
	case errors.Is(err, os.ErrNotExist):
		httpError(w, http.StatusNotFound, "path "+path+" does not exist")
	case errors.Is(err, os.ErrPermission):
		httpError(w, http.StatusForbidden, err.Error())
	default:
		httpError(w, http.StatusInternalServerError, err.Error())
	}
}

// writtenEntry is one element of POST /files's answer.
type writtenEntry struct {
	Path     string            `json:"path"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// File metadata (envd 0.6.2): X-Metadata-<key> headers on an upload,
// stored as metadataPrefix+key extended attributes on the file.
const (
	metadataHeader   = "x-metadata-"
	metadataPrefix   = "user.e2b."
	maxMetadataKey   = 255 - len(metadataPrefix) // the VFS limit on xattr names
	maxMetadataBytes = 4096                      // the inode's xattr budget, prefixes counted
)

// uploadMetadata reads an upload's metadata: each X-Metadata-<key>
// header, the key lower-cased (Go has canonicalised its case already),
// its first value; keys and values printable ASCII, keys at most
// maxMetadataKey bytes, all of it at most maxMetadataBytes.
func uploadMetadata(h http.Header) (map[string]string, error) {
	var meta map[string]string
	total := 0
	for name, vals := range h {
		lower := strings.ToLower(name)
		key, ok := strings.CutPrefix(lower, metadataHeader)
		if !ok || len(vals) == 0 {
			continue
		}
		switch {
		case key == "":
			return nil, fmt.Errorf("metadata header %q names no key", name)
		case len(key) > maxMetadataKey:
			return nil, fmt.Errorf("metadata key %.32q…: longer than %d bytes", key, maxMetadataKey)
		case !printable(key) || !printable(vals[0]):
			return nil, fmt.Errorf("metadata %q: keys and values must be printable US-ASCII", key)
		}
		if meta == nil {
			meta = map[string]string{}
		}
		meta[key] = vals[0]
		total += len(metadataPrefix) + len(key) + len(vals[0])
	}
	if total > maxMetadataBytes {
		return nil, fmt.Errorf("metadata of %d bytes: at most %d (keys, values and a %q prefix per key)", total, maxMetadataBytes, metadataPrefix)
	}
	return meta, nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// postFiles writes files: a raw body (application/octet-stream, maybe
// gzip-encoded) to ?path=, or each multipart "file" part to ?path= or to
// the part's file name.
func (s *Server) postFiles(w http.ResponseWriter, r *http.Request) {
	a, ok := s.fileAccess(w, r, "write")
	if !ok {
		return
	}
	meta, err := uploadMetadata(r.Header)
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	target := r.URL.Query().Get("path")
	body := io.Reader(r.Body)
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			httpError(w, http.StatusBadRequest, "gzip body: "+err.Error())
			return
		}
		defer zr.Close()
		body = zr
	}
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var out []writtenEntry
	if mt == "multipart/form-data" {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				httpError(w, http.StatusBadRequest, "multipart body: "+err.Error())
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			p := target
			if p == "" {
				p = partFileName(part)
			}
			if p == "" {
				httpError(w, http.StatusBadRequest, "a file part has neither ?path= nor a file name")
				return
			}
			e, status, err := writeFile(resolve(p, a), part, a, meta)
			part.Close()
			if err != nil {
				httpError(w, status, err.Error())
				return
			}
			out = append(out, e)
		}
	} else {
		if target == "" {
			httpError(w, http.StatusBadRequest, "path is required for a raw upload")
			return
		}
		e, status, err := writeFile(resolve(target, a), body, a, meta)
		if err != nil {
			httpError(w, status, err.Error())
			return
		}
		out = append(out, e)
	}
	if out == nil {
		out = []writtenEntry{}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// writeFile replaces path with the content of r atomically (a temporary
// file in the same directory, renamed over it), owned by a, with meta
// as its only metadata; missing parents are made. The status is for a
// failure.
func writeFile(path string, r io.Reader, a account, meta map[string]string) (writtenEntry, int, error) {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return writtenEntry{}, http.StatusBadRequest, fmt.Errorf("%s is a directory", path)
	}
	dir := filepath.Dir(path)
	if err := mkdirAs(dir, a); err != nil {
		return writtenEntry{}, http.StatusBadRequest, fmt.Errorf("make %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, ".envd-upload-*")
	if err != nil {
		return writtenEntry{}, http.StatusInternalServerError, err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, r); err != nil {
		return writtenEntry{}, http.StatusBadRequest, fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return writtenEntry{}, http.StatusInternalServerError, err
	}
	for k, v := range meta {
		if err := unix.Fsetxattr(int(tmp.Fd()), metadataPrefix+k, []byte(v), 0); err != nil {
			return writtenEntry{}, http.StatusBadRequest, fmt.Errorf("metadata %q on %s: %w", k, path, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return writtenEntry{}, http.StatusInternalServerError, err
	}
	chown(tmp.Name(), a)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return writtenEntry{}, http.StatusInternalServerError, err
	}
	ok = true
	return writtenEntry{Path: path, Name: filepath.Base(path), Type: "file", Metadata: meta}, 0, nil
}

// partFileName is a part's file name as sent: multipart.Part.FileName
// keeps only the base name, but the SDK names each file by its path.
func partFileName(part *multipart.Part) string {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}
