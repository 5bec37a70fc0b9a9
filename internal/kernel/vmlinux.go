package kernel

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

var (
	elfMagic       = []byte{0x7f, 'E', 'L', 'F'}
	lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}
	gzipMagic      = []byte{0x1f, 0x8b, 0x08}
	zstdMagic      = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// lz4LegacyBlock is the uncompressed size of every block but the last in
// an LZ4 legacy frame.
const lz4LegacyBlock = 8 << 20

// ExtractVmlinux returns the uncompressed ELF kernel inside a compressed
// kernel image (a bzImage/vmlinuz). It finds the payload by its magic:
// an LZ4 legacy stream (what Debian's kernels use), else gzip, else zstd,
// and decompresses it, ignoring what follows the stream. An input that is
// already an ELF is returned as is. The result must be an ELF, or it is an
// error naming what was tried.
func ExtractVmlinux(compressed []byte) ([]byte, error) {
	if bytes.HasPrefix(compressed, elfMagic) {
		return compressed, nil
	}
	var tried []string
	for _, f := range []struct {
		name  string
		magic []byte
		fn    func([]byte) ([]byte, error)
	}{
		{"lz4", lz4LegacyMagic, unlz4Legacy},
		{"gzip", gzipMagic, gunzipOne},
		{"zstd", zstdMagic, unzstdOne},
	} {
		i := bytes.Index(compressed, f.magic)
		if i < 0 {
			continue
		}
		out, err := f.fn(compressed[i:])
		switch {
		case err != nil:
			tried = append(tried, fmt.Sprintf("%s at offset %d: %v", f.name, i, err))
		case !bytes.HasPrefix(out, elfMagic):
			tried = append(tried, fmt.Sprintf("%s at offset %d: decompressed %d bytes are not an ELF", f.name, i, len(out)))
		default:
			return out, nil
		}
	}
	if len(tried) == 0 {
		return nil, errors.New("no LZ4, gzip or zstd stream found in the kernel image (supported: those three, or an ELF vmlinux)")
	}
	return nil, fmt.Errorf("no ELF kernel found: %v", tried)
}

// unlz4Legacy decodes an LZ4 legacy frame: the magic, then blocks each
// prefixed by its little-endian compressed size. The kernel appends its own
// data after the stream and the format has no end mark, so decoding stops at
// the first size that cannot be a block (or a new frame's magic restarts it).
func unlz4Legacy(b []byte) ([]byte, error) {
	var out bytes.Buffer
	buf := make([]byte, lz4LegacyBlock)
	maxComp := uint32(lz4.CompressBlockBound(lz4LegacyBlock))
	legacy := binary.LittleEndian.Uint32(lz4LegacyMagic)
	off := 4
	for off+4 <= len(b) {
		size := binary.LittleEndian.Uint32(b[off:])
		if size == legacy {
			off += 4
			continue
		}
		if size == 0 || size > maxComp || off+4+int(size) > len(b) {
			break
		}
		n, err := lz4.UncompressBlock(b[off+4:off+4+int(size)], buf)
		if err != nil {
			if out.Len() > 0 {
				break // trailing data that happened to look like a size
			}
			return nil, fmt.Errorf("lz4 block at offset %d: %w", off, err)
		}
		out.Write(buf[:n])
		off += 4 + int(size)
	}
	if out.Len() == 0 {
		return nil, errors.New("empty lz4 legacy stream")
	}
	return out.Bytes(), nil
}

// gunzipOne decodes the first gzip member, ignoring trailing data.
func gunzipOne(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	zr.Multistream(false)
	return io.ReadAll(zr)
}

// unzstdOne decodes a zstd stream; data after its last frame is ignored
// when at least one frame decoded.
func unzstdOne(b []byte) ([]byte, error) {
	zr, err := zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	out, err := io.ReadAll(zr)
	if err != nil && len(out) == 0 {
		return nil, err
	}
	return out, nil
}
