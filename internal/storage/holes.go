package storage

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Extent is a byte range of a file.
type Extent struct{ Off, Len int64 }

// MaxHoles bounds Holes: a guest can leave a hole in every other block of
// its disk, and the map is kept in memory.
const MaxHoles = 1 << 20

// errStopWalk ends walkData early without an error.
var errStopWalk = errors.New("stop")

// walkData calls each for every data extent of f (of size bytes), in
// order, as SEEK_DATA/SEEK_HOLE see them. Its time is proportional to the
// extents, not the size. each returning errStopWalk ends the walk.
func walkData(f *os.File, size int64, each func(Extent) error) error {
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		if err := each(Extent{data, hole - data}); err != nil {
			if errors.Is(err, errStopWalk) {
				return nil
			}
			return err
		}
		off = hole
	}
	return nil
}

// Holes returns the holes of the file at path as SEEK_DATA/SEEK_HOLE see
// them, in order, the one at its end included, at most MaxHoles (the
// first ones: a file with more simply keeps the rest allocated where
// they are used).
func Holes(path string) ([]Extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	var holes []Extent
	end := int64(0) // where the last data extent ended
	err = walkData(f, size, func(d Extent) error {
		if d.Off > end {
			holes = append(holes, Extent{end, d.Off - end})
		}
		end = d.Off + d.Len
		if len(holes) >= MaxHoles {
			return errStopWalk
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("holes of %s: %w", path, err)
	}
	if end < size && len(holes) < MaxHoles {
		holes = append(holes, Extent{end, size - end})
	}
	return holes, nil
}

// PunchHoles deallocates the ranges holes of the file at path (which
// then read as zeroes; its size stays) and syncs it.
func PunchHoles(path string, holes []Extent) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, h := range holes {
		if h.Len <= 0 {
			continue
		}
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, h.Off, h.Len); err != nil {
			return fmt.Errorf("punch holes in %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("punch holes in %s: sync: %w", path, err)
	}
	return f.Close()
}
