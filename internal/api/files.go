package api

import (
	"context"
	"io"
	"time"
)

// File operations in a running VM's guest (docs/files.md). Paths travel in
// query parameters, never in JSON, so names that are not UTF-8 arrive
// byte for byte; a relative path is relative to the guest's /root.

// FileInfo describes one path in a guest, as stat or a listing saw it.
type FileInfo struct {
	// Path is the absolute guest path. RawPath holds its bytes too when
	// they are not valid UTF-8 (JSON would replace them).
	Path    string    `json:"path"`
	RawPath []byte    `json:"raw_path,omitempty"`
	Name    string    `json:"name"`             // base name
	Type    string    `json:"type"`             // file, dir, symlink, other
	Size    int64     `json:"size"`             // bytes (of the link itself for a symlink)
	Mode    uint32    `json:"mode"`             // permission bits with setuid, setgid and sticky
	MTime   time.Time `json:"mtime"`            // last modification
	Target  string    `json:"target,omitempty"` // a symlink's target
}

// File types in FileInfo.Type.
const (
	FileTypeFile    = "file"
	FileTypeDir     = "dir"
	FileTypeSymlink = "symlink"
	FileTypeOther   = "other"
)

// FileReadRequest selects the bytes of a guest file: from Offset, at most
// Length bytes (0: to the end).
type FileReadRequest struct {
	Path   string
	Offset int64
	Length int64
}

// FileWriteRequest writes a guest file atomically (a temporary file in
// the same directory, renamed over the path once complete).
type FileWriteRequest struct {
	Path string
	// Mode is the new file's permission bits; nil keeps an existing file's
	// mode, or 0644 for a new file.
	Mode *uint32
	// Parents makes missing parent directories.
	Parents bool
}

// Files is the part of Service that reads and writes a running VM's
// guest files.
type Files interface {
	// ReadFile streams a file's bytes to w.
	ReadFile(ctx context.Context, ref string, req FileReadRequest, w io.Writer) error
	// WriteFile streams body into a file and returns its new stat.
	WriteFile(ctx context.Context, ref string, req FileWriteRequest, body io.Reader) (FileInfo, error)
	StatFile(ctx context.Context, ref, path string) (FileInfo, error)
	// ListFiles lists a directory's entries down to depth levels (>= 1),
	// sorted by path.
	ListFiles(ctx context.Context, ref, path string, depth int) ([]FileInfo, error)
	// MakeDir makes a directory and its missing parents.
	MakeDir(ctx context.Context, ref, path string) (FileInfo, error)
	// MoveFile renames from to to (to is the new path, never a directory
	// to move into).
	MoveFile(ctx context.Context, ref, from, to string) (FileInfo, error)
	// RemoveFile removes a file, a symlink or an empty directory; with
	// recursive, a whole tree.
	RemoveFile(ctx context.Context, ref, path string, recursive bool) error
	// ReadArchive streams a tar of the directory's contents (names
	// relative to it; modes, mtimes and symlinks kept) to w.
	ReadArchive(ctx context.Context, ref, path string, w io.Writer) error
	// WriteArchive unpacks a tar stream into a directory, made when
	// missing, and returns the directory's stat.
	WriteArchive(ctx context.Context, ref, path string, tar io.Reader) (FileInfo, error)
}
