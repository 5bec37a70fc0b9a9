package envd

import (
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	fspb "github.com/banger/banger/internal/envd/spec/filesystem"
)

const watchMask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_DELETE | unix.IN_MOVED_FROM |
	unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// watcher reports the changes under a directory through inotify, naming
// entries relative to it; recursive watchers add directories made later.
type watcher struct {
	root      string
	recursive bool
	file      *os.File
	events    chan *fspb.FilesystemEvent

	mu    sync.Mutex
	dirs  map[int]string // watch descriptor → directory
	close func()
}

func newWatcher(root string, recursive bool) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	w := &watcher{root: root, recursive: recursive, file: os.NewFile(uintptr(fd), "inotify"),
		events: make(chan *fspb.FilesystemEvent, 256), dirs: map[int]string{}}
	var once sync.Once
	done := make(chan struct{})
	w.close = func() { once.Do(func() { close(done); w.file.Close() }) }
	if err := w.add(root); err != nil {
		w.close()
		return nil, err
	}
	go w.read(done)
	return w, nil
}

// add watches dir and, for a recursive watcher, the directories under it.
func (w *watcher) add(dir string) error {
	var wd int
	err := control(w.file, func(fd int) error {
		var err error
		wd, err = unix.InotifyAddWatch(fd, dir, watchMask)
		return err
	})
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.dirs[wd] = dir
	w.mu.Unlock()
	if !w.recursive {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		if e.IsDir() {
			_ = w.add(filepath.Join(dir, e.Name()))
		}
	}
	return nil
}

func (w *watcher) read(done chan struct{}) {
	defer close(w.events)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameEnd := off + unix.SizeofInotifyEvent + int(raw.Len)
			if nameEnd > n {
				break
			}
			name := string(trimNUL(buf[off+unix.SizeofInotifyEvent : nameEnd]))
			off = nameEnd
			ev := w.translate(int(raw.Wd), raw.Mask, name)
			if ev == nil {
				continue
			}
			select {
			case w.events <- ev:
			case <-done:
				return
			}
		}
	}
}

// translate turns one inotify event into E2B's event, nil for none.
func (w *watcher) translate(wd int, mask uint32, name string) *fspb.FilesystemEvent {
	w.mu.Lock()
	dir, ok := w.dirs[wd]
	if mask&unix.IN_IGNORED != 0 {
		delete(w.dirs, wd)
	}
	w.mu.Unlock()
	if !ok || name == "" {
		return nil
	}
	full := filepath.Join(dir, name)
	rel, err := filepath.Rel(w.root, full)
	if err != nil {
		rel = full
	}
	ev := &fspb.FilesystemEvent{Name: rel}
	switch {
	case mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		ev.Type = fspb.EventType_EVENT_TYPE_CREATE
		if w.recursive && mask&unix.IN_ISDIR != 0 {
			_ = w.add(full)
		}
	case mask&unix.IN_MODIFY != 0:
		ev.Type = fspb.EventType_EVENT_TYPE_WRITE
	case mask&unix.IN_DELETE != 0:
		ev.Type = fspb.EventType_EVENT_TYPE_REMOVE
	case mask&unix.IN_MOVED_FROM != 0:
		ev.Type = fspb.EventType_EVENT_TYPE_RENAME
	case mask&unix.IN_ATTRIB != 0:
		ev.Type = fspb.EventType_EVENT_TYPE_CHMOD
	default:
		return nil
	}
	return ev
}

func trimNUL(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}
