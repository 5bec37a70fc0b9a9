package hostnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/run/netns"

// enteredEnv marks a process re-executed by EnterNetns with the namespace it
// was sent into, so that a failed entry cannot loop.
const enteredEnv = "BANGER_NETNS_ENTERED"

var netnsNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// InNetns reports whether the calling thread is in the named network
// namespace (the one bound at /run/netns/NAME). A namespace that does not
// exist is false, not an error.
func InNetns(name string) (bool, error) {
	if !netnsNameRE.MatchString(name) {
		return false, fmt.Errorf("invalid network namespace name %q: use letters, digits, '.', '_' and '-'", name)
	}
	var want, have unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &want); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat network namespace %s: %w", name, err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &have); err != nil {
		return false, fmt.Errorf("stat own network namespace: %w", err)
	}
	return want.Dev == have.Dev && want.Ino == have.Ino, nil
}

// EnterNetns makes the process run inside the named network namespace. When
// already inside it returns nil. Otherwise it creates the namespace if
// missing ("ip netns add") and replaces the process, keeping its PID, with
// "ip netns exec NAME <own executable> <same args>", which also gives the
// new image a /sys of that namespace. It returns only on failure. The
// environment marker BANGER_NETNS_ENTERED stops a second re-exec if the
// entry did not take.
func EnterNetns(name string) error {
	in, err := InNetns(name)
	if err != nil {
		return err
	}
	if in {
		return nil
	}
	if os.Getenv(enteredEnv) == name {
		return fmt.Errorf("re-executed into network namespace %s but not inside it: refusing to loop", name)
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return fmt.Errorf("enter network namespace %s: ip not found on PATH: install iproute2", name)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, os.ErrNotExist) {
		if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
			// A concurrent creator may have won; only fail when it is still missing.
			if _, serr := os.Stat(filepath.Join(netnsDir, name)); serr != nil {
				return fmt.Errorf("create network namespace %s: %w: %s", name, err, out)
			}
		}
	}
	if err := waitNetnsBound(filepath.Join(netnsDir, name), 5*time.Second); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", name, err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("enter network namespace %s: find own executable: %w", name, err)
	}
	argv := append([]string{ip, "netns", "exec", name, self}, os.Args[1:]...)
	env := append(os.Environ(), enteredEnv+"="+name)
	// Keep the namespace we were started in open across the exec (no
	// close-on-exec), so work that needs the host's network — package
	// downloads — can still run there (HostCommand).
	if fd, err := syscall.Open("/proc/self/ns/net", syscall.O_RDONLY, 0); err == nil {
		env = append(env, hostNetnsEnv+"="+strconv.Itoa(fd))
	}
	if err := syscall.Exec(ip, argv, env); err != nil {
		return fmt.Errorf("re-exec into network namespace %s: %w", name, err)
	}
	return nil // not reached
}

// nsfsMagic is the file system type of a bound namespace (NSFS_MAGIC).
const nsfsMagic = 0x6e736673

// waitNetnsBound waits until path is a bound namespace. "ip netns add"
// creates the file first and bind-mounts the namespace on it after, so a
// concurrent creator's file can exist while it is still an empty file, and
// entering it then fails with EINVAL.
func waitNetnsBound(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var fs unix.Statfs_t
		err := unix.Statfs(path, &fs)
		if err == nil && int64(fs.Type) == nsfsMagic {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return fmt.Errorf("%s is not a bound network namespace after %v", path, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hostNetnsEnv carries the number of an inherited file descriptor open on
// the network namespace bangerd was started in, set by EnterNetns.
const hostNetnsEnv = "BANGER_HOST_NETNS_FD"

// HostNetns returns a path naming the network namespace this process was
// started in before EnterNetns moved it, or "" when it was not moved.
func HostNetns() string {
	v := os.Getenv(hostNetnsEnv)
	if v == "" || os.Getenv(enteredEnv) == "" {
		return ""
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 0 {
		return ""
	}
	p := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// HostCommand is exec.CommandContext for commands that need the network of
// the host bangerd was started on (apt, mmdebstrap): when bangerd moved
// itself into a network namespace for its VMs, the command runs back in the
// original namespace through nsenter; otherwise it runs as it is.
func HostCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	if ns := HostNetns(); ns != "" {
		if nsenter, err := exec.LookPath("nsenter"); err == nil {
			return exec.CommandContext(ctx, nsenter, append([]string{"--net=" + ns, "--", name}, args...)...)
		}
	}
	return exec.CommandContext(ctx, name, args...)
}

// ListenHost is net.Listen in the network namespace bangerd was started in
// (see HostNetns), where its users are, or in the process's own when it was
// not moved.
func ListenHost(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inHostNetns(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil && l != nil {
		l.Close()
		l = nil
	}
	return l, err
}

// ListenPacketHost is net.ListenPacket where ListenHost listens.
func ListenPacketHost(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inHostNetns(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil && pc != nil {
		pc.Close()
		pc = nil
	}
	return pc, err
}

// inHostNetns runs open, which makes sockets, in the host's network
// namespace (HostNetns), or here when the process was not moved. A
// socket belongs to the namespace it was created in, so only the
// creation happens over there: on a locked thread that enters the
// namespace and comes back. Should that thread fail to come back, the
// error says so and the caller closes what open made.
func inHostNetns(open func() error) error {
	ns := HostNetns()
	if ns == "" {
		return open()
	}
	res := make(chan error, 1)
	go func() {
		// Never unlocked on failure to come back: the goroutine ends
		// locked, so the runtime discards the thread rather than reuse it
		// in the wrong namespace.
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(own)
		host, err := unix.Open(ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res <- fmt.Errorf("open host network namespace: %w", err)
			runtime.UnlockOSThread()
			return
		}
		defer unix.Close(host)
		if err := unix.Setns(host, unix.CLONE_NEWNET); err != nil {
			res <- fmt.Errorf("enter host network namespace: %w", err)
			return
		}
		oerr := open()
		if err := unix.Setns(own, unix.CLONE_NEWNET); err != nil {
			res <- fmt.Errorf("return from host network namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		res <- oerr
	}()
	return <-res
}
