package envd

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	fspb "github.com/banger/banger/internal/envd/spec/filesystem"
)

// maxListEntries bounds one ListDir answer.
const maxListEntries = 100_000

// maxPolledEvents bounds the events a polling watcher keeps between two
// GetWatcherEvents; older ones are dropped.
const maxPolledEvents = 10_000

// fsService is the filesystem service.
type fsService struct {
	s        *Server
	mu       sync.Mutex
	watchers map[string]*polled
	nextID   int
}

func newFS(s *Server) *fsService { return &fsService{s: s, watchers: map[string]*polled{}} }

// polled is a watcher whose events wait for GetWatcherEvents.
type polled struct {
	w      *watcher
	mu     sync.Mutex
	events []*fspb.FilesystemEvent
}

func (f *fsService) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, p := range f.watchers {
		p.w.close()
		delete(f.watchers, id)
	}
}

// entryInfo describes path without following a final symlink.
func entryInfo(path string) (*fspb.EntryInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	e := &fspb.EntryInfo{
		Name:         fi.Name(),
		Path:         path,
		Size:         fi.Size(),
		Mode:         uint32(fi.Mode().Perm()),
		Permissions:  fi.Mode().String(),
		ModifiedTime: timestamppb.New(fi.ModTime()),
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		e.Type = fspb.FileType_FILE_TYPE_SYMLINK
		if target, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = &target
		}
	case fi.IsDir():
		e.Type = fspb.FileType_FILE_TYPE_DIRECTORY
	default:
		e.Type = fspb.FileType_FILE_TYPE_FILE
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Owner = userName(st.Uid)
		e.Group = groupName(st.Gid)
	}
	e.Metadata = fileMetadata(path)
	return e, nil
}

// fileMetadata is path's user-defined metadata: its metadataPrefix
// extended attributes, set by an upload or by anyone else; nil when
// none (or the file system has none). Bounded by what xattrs can hold.
func fileMetadata(path string) map[string]string {
	const most = 64 << 10 // what xattrs on Linux can hold
	n, err := unix.Llistxattr(path, nil)
	if err != nil || n <= 0 || n > most {
		return nil
	}
	buf := make([]byte, n)
	if n, err = unix.Llistxattr(path, buf); err != nil {
		return nil
	}
	var meta map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		key, ok := strings.CutPrefix(name, metadataPrefix)
		if !ok || key == "" {
			continue
		}
		size, err := unix.Lgetxattr(path, name, nil)
		if err != nil || size < 0 || size > most {
			continue
		}
		val := make([]byte, size)
		if size, err = unix.Lgetxattr(path, name, val); err != nil {
			continue
		}
		if meta == nil {
			meta = map[string]string{}
		}
		meta[key] = string(val[:size])
	}
	return meta
}

// withEntry adds to ev the entry it names under dir, when asked and it
// still exists (envd 0.6.3's include_entry).
func withEntry(ev *fspb.FilesystemEvent, dir string, include bool) *fspb.FilesystemEvent {
	if include {
		if e, err := entryInfo(filepath.Join(dir, ev.Name)); err == nil {
			ev.Entry = e
		}
	}
	return ev
}

func userName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}

func groupName(gid uint32) string {
	id := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name
	}
	return id
}

// Stat describes one entry.
func (f *fsService) Stat(_ context.Context, req *connect.Request[fspb.StatRequest]) (*connect.Response[fspb.StatResponse], error) {
	a, err := f.s.userFor(req.Header())
	if err != nil {
		return nil, err
	}
	e, err := entryInfo(resolve(req.Msg.GetPath(), a))
	if err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&fspb.StatResponse{Entry: e}), nil
}

// MakeDir makes a directory and its parents, owned by the user;
// AlreadyExists when it is there.
func (f *fsService) MakeDir(_ context.Context, req *connect.Request[fspb.MakeDirRequest]) (*connect.Response[fspb.MakeDirResponse], error) {
	a, err := f.s.userFor(req.Header())
	if err != nil {
		return nil, err
	}
	path := resolve(req.Msg.GetPath(), a)
	if fi, err := os.Stat(path); err == nil {
		if fi.IsDir() {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory %s already exists", path))
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s exists and is not a directory", path))
	}
	if err := mkdirAs(path, a); err != nil {
		return nil, connectErr(err)
	}
	e, err := entryInfo(path)
	if err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&fspb.MakeDirResponse{Entry: e}), nil
}

// Move renames an entry, making the destination's parents.
func (f *fsService) Move(_ context.Context, req *connect.Request[fspb.MoveRequest]) (*connect.Response[fspb.MoveResponse], error) {
	a, err := f.s.userFor(req.Header())
	if err != nil {
		return nil, err
	}
	src := resolve(req.Msg.GetSource(), a)
	dst := resolve(req.Msg.GetDestination(), a)
	if _, err := os.Lstat(src); err != nil {
		return nil, connectErr(err)
	}
	if err := mkdirAs(filepath.Dir(dst), a); err != nil {
		return nil, connectErr(err)
	}
	if err := os.Rename(src, dst); err != nil {
		return nil, connectErr(err)
	}
	e, err := entryInfo(dst)
	if err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&fspb.MoveResponse{Entry: e}), nil
}

// ListDir lists a directory to the given depth (0 means 1), without
// following symlinked directories.
func (f *fsService) ListDir(_ context.Context, req *connect.Request[fspb.ListDirRequest]) (*connect.Response[fspb.ListDirResponse], error) {
	a, err := f.s.userFor(req.Header())
	if err != nil {
		return nil, err
	}
	root := resolve(req.Msg.GetPath(), a)
	fi, err := os.Stat(root)
	if err != nil {
		return nil, connectErr(err)
	}
	if !fi.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s is not a directory", root))
	}
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	var out []*fspb.EntryInfo
	var walk func(dir string, level int) error
	walk = func(dir string, level int) error {
		names, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, d := range names {
			if len(out) >= maxListEntries {
				return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("more than %d entries under %s", maxListEntries, root))
			}
			p := filepath.Join(dir, d.Name())
			e, err := entryInfo(p)
			if err != nil {
				continue // removed meanwhile
			}
			out = append(out, e)
			if e.Type == fspb.FileType_FILE_TYPE_DIRECTORY && level < depth {
				if err := walk(p, level+1); err != nil && !errors.Is(err, os.ErrPermission) {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(root, 1); err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&fspb.ListDirResponse{Entries: out}), nil
}

// Remove removes an entry and everything under it; a missing entry is no
// error.
func (f *fsService) Remove(_ context.Context, req *connect.Request[fspb.RemoveRequest]) (*connect.Response[fspb.RemoveResponse], error) {
	a, err := f.s.userFor(req.Header())
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(resolve(req.Msg.GetPath(), a)); err != nil {
		return nil, connectErr(err)
	}
	return connect.NewResponse(&fspb.RemoveResponse{}), nil
}

// watchTarget checks a directory to watch.
func (f *fsService) watchTarget(h http.Header, path string, allowNetwork bool) (string, error) {
	a, err := f.s.userFor(h)
	if err != nil {
		return "", err
	}
	dir := resolve(path, a)
	fi, err := os.Stat(dir)
	if err != nil {
		return "", connectErr(err)
	}
	if !fi.IsDir() {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s is not a directory", dir))
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && !allowNetwork {
		if kind := networkFS(int64(st.Type)); kind != "" {
			return "", connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s is on a network mount (%s), where changes made elsewhere are not seen: ask with allowNetworkMounts to watch it anyway", dir, kind))
		}
	}
	return dir, nil
}

// networkFS names the network file system of statfs type t (NFS,
// CIFS/SMB, FUSE, 9p, Ceph, AFS, Coda), "" for a local one: inotify on
// those sees only the changes made through this machine (envd 0.6.4
// watches them only when asked).
func networkFS(t int64) string {
	switch t {
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.CIFS_SUPER_MAGIC, unix.SMB_SUPER_MAGIC, unix.SMB2_SUPER_MAGIC:
		return "smb"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	case unix.V9FS_MAGIC:
		return "9p"
	case unix.CEPH_SUPER_MAGIC:
		return "ceph"
	case unix.AFS_SUPER_MAGIC:
		return "afs"
	case unix.CODA_SUPER_MAGIC:
		return "coda"
	}
	return ""
}

// WatchDir streams the changes under a directory: a start event, then
// file system events, with keepalives between.
func (f *fsService) WatchDir(ctx context.Context, req *connect.Request[fspb.WatchDirRequest], stream *connect.ServerStream[fspb.WatchDirResponse]) error {
	dir, err := f.watchTarget(req.Header(), req.Msg.GetPath(), req.Msg.GetAllowNetworkMounts())
	if err != nil {
		return err
	}
	w, err := newWatcher(dir, req.Msg.GetRecursive())
	if err != nil {
		return connectErr(err)
	}
	defer w.close()
	if err := stream.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Start{Start: &fspb.WatchDirResponse_StartEvent{}}}); err != nil {
		return nil
	}
	every := f.s.keepaliveEvery(req.Header())
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.events:
			if !ok {
				return connect.NewError(connect.CodeInternal, errors.New("watcher stopped"))
			}
			ev = withEntry(ev, dir, req.Msg.GetIncludeEntry())
			if err := stream.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Filesystem{Filesystem: ev}}); err != nil {
				return nil
			}
			tick.Reset(every)
		case <-tick.C:
			if err := stream.Send(&fspb.WatchDirResponse{Event: &fspb.WatchDirResponse_Keepalive{Keepalive: &fspb.WatchDirResponse_KeepAlive{}}}); err != nil {
				return nil
			}
		}
	}
}

// CreateWatcher starts a watcher whose events are fetched by polling.
func (f *fsService) CreateWatcher(_ context.Context, req *connect.Request[fspb.CreateWatcherRequest]) (*connect.Response[fspb.CreateWatcherResponse], error) {
	dir, err := f.watchTarget(req.Header(), req.Msg.GetPath(), req.Msg.GetAllowNetworkMounts())
	if err != nil {
		return nil, err
	}
	w, err := newWatcher(dir, req.Msg.GetRecursive())
	if err != nil {
		return nil, connectErr(err)
	}
	p := &polled{w: w}
	go func() {
		include := req.Msg.GetIncludeEntry()
		for ev := range w.events {
			ev = withEntry(ev, dir, include)
			p.mu.Lock()
			if len(p.events) >= maxPolledEvents {
				p.events = p.events[1:]
			}
			p.events = append(p.events, ev)
			p.mu.Unlock()
		}
	}()
	f.mu.Lock()
	f.nextID++
	id := "w" + strconv.Itoa(f.nextID)
	f.watchers[id] = p
	f.mu.Unlock()
	return connect.NewResponse(&fspb.CreateWatcherResponse{WatcherId: id}), nil
}

func (f *fsService) polledWatcher(id string) (*polled, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.watchers[id]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher %q not found", id))
	}
	return p, nil
}

// GetWatcherEvents hands over the events gathered since the last call.
func (f *fsService) GetWatcherEvents(_ context.Context, req *connect.Request[fspb.GetWatcherEventsRequest]) (*connect.Response[fspb.GetWatcherEventsResponse], error) {
	p, err := f.polledWatcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	evs := p.events
	p.events = nil
	p.mu.Unlock()
	return connect.NewResponse(&fspb.GetWatcherEventsResponse{Events: evs}), nil
}

// RemoveWatcher stops a polling watcher.
func (f *fsService) RemoveWatcher(_ context.Context, req *connect.Request[fspb.RemoveWatcherRequest]) (*connect.Response[fspb.RemoveWatcherResponse], error) {
	p, err := f.polledWatcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	delete(f.watchers, req.Msg.GetWatcherId())
	f.mu.Unlock()
	p.w.close()
	return connect.NewResponse(&fspb.RemoveWatcherResponse{}), nil
}
