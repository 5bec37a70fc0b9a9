package files

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/transfer"
)

// Transports a write into a guest takes: the token-guarded plain TCP data
// channel of internal/transfer (a guest under emulation decrypts SSH at a
// few MB/s to tens of MB/s, plain TCP several times faster), or the SSH
// session's stdin when the daemon's configuration asks for it or the
// guest's banger-init cannot receive.
const (
	TransportTCP = "tcp"
	TransportSSH = "ssh"
)

// streamPrelude defines `stream`, which writes the body to stdout: from
// banger-init recv (the data channel; it announces its port on stderr)
// when a token came and the guest can receive, else from the SSH
// session's stdin after announcing that.
func streamPrelude() string {
	return fmt.Sprintf(`recv=${BANGER_INIT:-%s}
if [ -n "${%s:-}" ] && [ -x "$recv" ] && "$recv" recv --check >/dev/null 2>&1; then
	stream() { "$recv" recv; }
else
	echo %s >&2
	stream() { cat; }
fi
`, guestinit.InitPath, transfer.TokenEnv, shell.Quote(transfer.AnnounceStdin))
}

// runStream runs script (which calls `stream` to read the body; the
// helpers of prelude come first) in vm's guest and sends body over the
// data channel or the session's stdin, as the guest announces. A failure
// of body itself is returned as it is (the client's request broke).
func (sv *Service) runStream(ctx context.Context, vm model.VM, what, script string, body io.Reader) error {
	cli, err := sv.Dial(ctx, vm)
	if err != nil {
		return err
	}
	var env map[string]string
	token := ""
	if sv.DialData != nil && (sv.Transport == nil || sv.Transport() != TransportSSH) {
		if token, err = transfer.NewToken(); err != nil {
			return err
		}
		env = map[string]string{transfer.TokenEnv: token}
	}
	stderr := transfer.NewAnnounceWriter(16 << 10)
	stdinR, stdinW := io.Pipe()
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	sendCtx, cancelSend := context.WithCancel(ctx)
	defer cancelSend()
	type ran struct {
		code int
		err  error
	}
	runc := make(chan ran, 1)
	go func() {
		code, err := cli.Run(runCtx, shell.BashCommand(streamPrelude()+script, env), stdinR, nil, stderr)
		stdinR.CloseWithError(errors.New("the guest command ended"))
		cancelSend()
		runc <- ran{code, err}
	}()
	src := &recordingReader{r: body}
	var res ran
	var sendErr, dialErr error
	select {
	case line := <-stderr.Announced():
		port, viaStdin, _ := transfer.ParseAnnounce(line)
		if viaStdin {
			_, sendErr = io.Copy(stdinW, src)
			stdinW.CloseWithError(sendErr)
		} else {
			stdinW.Close()
			conn, err := sv.DialData(sendCtx, vm, port)
			if err != nil {
				dialErr = err
				cancelRun() // the guest waits for a sender that will not come
			} else {
				_, sendErr = transfer.Send(sendCtx, conn, token, src)
			}
		}
		if src.err != nil && !errors.Is(src.err, io.EOF) {
			cancelRun() // the body broke: the guest must not take a short stream
		}
		res = <-runc
	case res = <-runc:
		stdinW.Close()
	}
	switch {
	case src.err != nil && !errors.Is(src.err, io.EOF):
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errdefs.Invalid(fmt.Errorf("%s in vm %s: the request body broke: %w", what, vm.Name, src.err))
	case ctx.Err() != nil:
		return ctx.Err()
	case dialErr != nil:
		return errdefs.Errorf(errdefs.CodeUnavailable, "%s in vm %s: connect to the guest's data channel: %v", what, vm.Name, dialErr)
	case res.err != nil:
		return errdefs.Errorf(errdefs.CodeUnavailable, "%s in vm %s: %v", what, vm.Name, res.err)
	case res.code != 0:
		return guestError(vm.Name, what, res.code, stderr.String())
	case sendErr != nil:
		return errdefs.Errorf(errdefs.CodeUnavailable, "%s in vm %s: %v", what, vm.Name, sendErr)
	}
	return nil
}

// recordingReader keeps the first error its reader returned.
type recordingReader struct {
	r   io.Reader
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}
