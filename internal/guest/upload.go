package guest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/tail"
)

// uploadCleanupTimeout bounds the removal of a partial upload.
const uploadCleanupTimeout = 10 * time.Second

// Upload writes data to path on the guest with permission bits mode,
// atomically: readers of path see the old file or the whole new one. The
// data goes to a temporary file next to path (created exclusively, private
// until chmod) in one Run; only when that Run saw the whole of data and
// succeeded does a second Run chmod it and rename it over path. On any
// failure the temporary file is removed (best effort, also when ctx was
// cancelled) and path is untouched. path's directory must exist.
func Upload(ctx context.Context, c Client, path string, mode os.FileMode, data io.Reader) error {
	if path == "" || strings.HasSuffix(path, "/") {
		return fmt.Errorf("upload: %q is not a file path", path)
	}
	if mode&^os.ModePerm != 0 {
		return fmt.Errorf("upload %s: mode %v has bits beyond permissions; allowed are 0000-0777", path, mode)
	}
	if data == nil {
		data = strings.NewReader("")
	}
	tmp, err := tempName(path)
	if err != nil {
		return err
	}
	write, install := uploadScripts(path, tmp, mode)
	if err := runChecked(ctx, c, write, data); err != nil {
		removeTemp(ctx, c, tmp)
		return fmt.Errorf("upload %s: %w", path, err)
	}
	if err := runChecked(ctx, c, install, nil); err != nil {
		removeTemp(ctx, c, tmp)
		return fmt.Errorf("upload %s: %w", path, err)
	}
	return nil
}

// uploadScripts are Upload's two guest commands: write stdin to tmp, and
// move tmp into place with mode. set -C makes the redirection fail rather
// than follow or overwrite anything already at tmp; umask 077 keeps the
// partial file private.
func uploadScripts(path, tmp string, mode os.FileMode) (write, install string) {
	write = "set -C; umask 077; cat > " + shell.Quote(tmp)
	install = fmt.Sprintf("chmod %04o %s && mv -f %s %s", mode.Perm(), shell.Quote(tmp), shell.Quote(tmp), shell.Quote(path))
	return write, install
}

// tempName is a fresh sibling name of path.
func tempName(path string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("upload %s: %w", path, err)
	}
	return path + ".banger-" + hex.EncodeToString(b[:]), nil
}

// runChecked runs cmd and turns a non-zero status into an error carrying the
// end of its stderr.
func runChecked(ctx context.Context, c Client, cmd string, stdin io.Reader) error {
	stderr := tail.Buffer{Max: 4 << 10} // enough of an error message
	code, err := c.Run(ctx, cmd, stdin, nil, &stderr)
	if err != nil {
		return err
	}
	if code != 0 {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "no message"
		}
		return fmt.Errorf("guest command exited with status %d: %s", code, msg)
	}
	return nil
}

func removeTemp(ctx context.Context, c Client, tmp string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), uploadCleanupTimeout)
	defer cancel()
	_, _ = c.Run(rctx, "rm -f "+shell.Quote(tmp), nil, nil, nil)
}
