package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/transfer"
)

// recv is `banger-init recv`: it receives one stream from the daemon over
// the data channel (see internal/transfer) and writes it to stdout. It
// listens on a fresh TCP port, announces it on stderr, and takes the
// connection that presents the token in $BANGER_XFER_TOKEN. `--check`
// only says (exit 0) that this banger-init can receive, so a script can
// fall back to its SSH stdin with an older one.
func recv(args []string) int {
	fs := flag.NewFlagSet("recv", flag.ContinueOnError)
	check := fs.Bool("check", false, "only report that this banger-init can receive")
	listen := fs.String("listen", ":0", "TCP address to listen on")
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for the sender to connect")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *check {
		return 0
	}
	token, err := transfer.ParseToken(os.Getenv(transfer.TokenEnv))
	if err != nil {
		fmt.Fprintf(os.Stderr, "banger: recv: $%s: %v\n", transfer.TokenEnv, err)
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "banger: recv: %v\n", err)
		return 1
	}
	// A bigger pipe to the unpacker means far fewer context switches,
	// which are dear under emulation. Not a pipe, or not allowed: no matter.
	_, _ = unix.FcntlInt(os.Stdout.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	fmt.Fprintln(os.Stderr, transfer.Announce(ln.Addr().(*net.TCPAddr).Port))
	ctx, cancel := context.WithTimeoutCause(context.Background(), *timeout, fmt.Errorf("none within %s", *timeout))
	defer cancel()
	_, err = transfer.Receive(ctx, ln, token, os.Stdout, transfer.ReceiveOptions{
		Rejected: func(remote string, err error) {
			fmt.Fprintf(os.Stderr, "banger: recv: refused a connection from %s: %v\n", remote, err)
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "banger: recv: %v\n", err)
		return 1
	}
	return 0
}
