package provider

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	vkerrdefs "github.com/virtual-kubelet/virtual-kubelet/errdefs"
	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// The kubelet API's streams: exec, attach and port-forward, each bridged
// to one of bangerd's streams.

// RunInContainer runs cmd in the pod's VM (banger exec) in the
// container's working directory; its exit code is the exec's. With
// stdin (kubectl exec -i) the command reads the client's input until it
// ends; with a terminal (-t) it runs on a guest pseudo-terminal whose
// size follows the client's.
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach vkapi.AttachIO) error {
	e := p.get(namespace, podName)
	if e == nil || e.vm == "" {
		return vkerrdefs.NotFoundf("pod %s/%s has no VM on this node", namespace, podName)
	}
	req := api.ExecRequest{Command: cmd}
	p.mu.Lock()
	for _, c := range e.pod.Spec.Containers {
		if c.Name == containerName {
			req.Cwd = c.WorkingDir
		}
	}
	p.mu.Unlock()
	out, errw := outputs(attach)
	defer out.Close()
	defer errw.Close()
	var code int
	if attach.Stdin() == nil && !attach.TTY() {
		var err error
		if code, err = p.b.ExecVM(ctx, e.vm, req, out, errw); err != nil {
			return err
		}
	} else {
		req.TTY = attach.TTY()
		st, err := p.b.ExecVMAttached(ctx, e.vm, req)
		if err != nil {
			return err
		}
		end, err := bridge(ctx, st, attach, out, errw, true)
		if err != nil {
			return err
		}
		code = end.ExitCode
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

// AttachToContainer attaches to the container's session (its newest):
// the output it writes from now on, and, when the container has stdin,
// the client's input (its end leaves the session's stdin open) and
// terminal size. It returns when the session ends or the client leaves;
// the session goes on.
func (p *Provider) AttachToContainer(ctx context.Context, namespace, podName, containerName string, attach vkapi.AttachIO) error {
	e := p.get(namespace, podName)
	if e == nil || e.vm == "" {
		return vkerrdefs.NotFoundf("pod %s/%s has no VM on this node", namespace, podName)
	}
	s, err := p.session(ctx, e.vm, containerName)
	if err != nil {
		return err
	}
	if attach.Stdin() != nil && s.StdinMode != model.StdinPipe {
		return vkerrdefs.InvalidInputf("container %q has no stdin (set stdin: true in its spec): attach without -i", containerName)
	}
	out, errw := outputs(attach)
	defer out.Close()
	defer errw.Close()
	st, err := p.b.AttachSession(ctx, e.vm, s.ID, api.AttachRequest{From: api.AttachFromEnd})
	if err != nil {
		return err
	}
	_, err = bridge(ctx, st, attach, out, errw, false)
	return err
}

// outputs are the client's output streams, or discards for those it did
// not ask for.
func outputs(attach vkapi.AttachIO) (io.WriteCloser, io.WriteCloser) {
	var out, errw io.WriteCloser = nopCloser{io.Discard}, nopCloser{io.Discard}
	if w := attach.Stdout(); w != nil {
		out = w
	}
	if w := attach.Stderr(); w != nil {
		errw = w
	}
	return out, errw
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// bridge copies the client's stdin and terminal sizes to st and st's
// output to the client until bangerd ends the stream; ctx ending (the
// client left) closes it. With endInput, the end of the client's input
// is passed on (an exec's command reads end-of-file); without, it is
// kept to itself (a session attachment would detach).
func bridge(ctx context.Context, st *api.AttachStream, attach vkapi.AttachIO, stdout, stderr io.Writer, endInput bool) (api.AttachEndInfo, error) {
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	var wg sync.WaitGroup
	done := make(chan struct{})
	defer func() { close(done); wg.Wait() }()
	if in := attach.Stdin(); in != nil {
		// Not waited for: a read of the client's stdin returns only when
		// the client sends or its stream closes, after this returns.
		go func() {
			_, err := io.Copy(st, in)
			if err == nil && endInput {
				_ = st.CloseStdin()
			}
		}()
	} else if endInput && !attach.TTY() {
		_ = st.CloseStdin()
	}
	if attach.TTY() && attach.Resize() != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			followSizes(done, attach.Resize(), st)
		}()
	}
	end, err := st.Receive(stdout, stderr)
	if ctx.Err() != nil {
		return end, nil // the client left
	}
	return end, err
}

// followSizes passes the client's terminal sizes on until done. A zero
// size is what a closed size channel yields: it ends the following.
func followSizes(done <-chan struct{}, sizes <-chan vkapi.TermSize, st interface{ Resize(api.WindowSize) error }) {
	for {
		select {
		case <-done:
			return
		case ts, ok := <-sizes:
			ws, valid := windowSize(ts)
			if !ok || ts.Width == 0 && ts.Height == 0 {
				return
			}
			if valid {
				_ = st.Resize(ws)
			}
		}
	}
}

// windowSize is a client's terminal size as bangerd takes it, and false
// when bangerd would refuse it.
func windowSize(ts vkapi.TermSize) (api.WindowSize, bool) {
	ws := api.WindowSize{Cols: int(ts.Width), Rows: int(ts.Height)}
	return ws, ws.Valid()
}

// PortForward connects the client's stream to port of the pod's VM
// through bangerd (the guest's address, else its loopback over SSH: a
// service bound to the guest's 127.0.0.1 is reached too). The end of
// the client's data is passed to the guest as a half-close; the forward
// ends when the guest closes or the client leaves.
func (p *Provider) PortForward(ctx context.Context, namespace, podName string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	e := p.get(namespace, podName)
	if e == nil || e.vm == "" {
		return vkerrdefs.NotFoundf("pod %s/%s has no VM on this node", namespace, podName)
	}
	if port < 1 || port > 65535 {
		return vkerrdefs.InvalidInputf("port %d is not a TCP port", port)
	}
	g, err := p.b.DialVM(ctx, e.vm, int(port))
	if err != nil {
		return err
	}
	defer g.Close()
	stop := context.AfterFunc(ctx, func() { g.Close(); stream.Close() })
	defer stop()
	go func() {
		_, _ = io.Copy(g, stream)
		closeWrite(g)
	}()
	_, err = io.Copy(stream, g)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// closeWrite half-closes c, or closes it when it cannot.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}
