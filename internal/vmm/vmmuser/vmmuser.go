// Package vmmuser provides the unprivileged system user VMM processes run
// as (banger-vmm), creating it when missing. A guest runs a stranger's code
// and a VMM bug can hand that code the VMM process; as this user, with no
// capabilities, it reaches none of the daemon's state, keys or other VMs'
// disks.
//
// It owns only the account. Which files the user may open, and when a VMM
// drops to it, is each driver's business.
package vmmuser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
)

// Default is the user VMMs run as unless configured otherwise.
const Default = "banger-vmm"

// User is a system account.
type User struct {
	Name string
	UID  int
	GID  int
}

// Lookup returns the user name, or an error wrapping user.UnknownUserError
// when there is none.
func Lookup(name string) (User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return User{}, err
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return User{}, fmt.Errorf("user %s has non-numeric ids %s:%s", name, u.Uid, u.Gid)
	}
	if uid == 0 || gid == 0 {
		// A VMM "dropping" to root would be no drop at all.
		return User{}, fmt.Errorf("user %s has uid %d gid %d: a VMM user must not be root", name, uid, gid)
	}
	return User{Name: name, UID: uid, GID: gid}, nil
}

// mu serialises creation within the process; useradd locks /etc/passwd
// against other processes.
var mu sync.Mutex

// Ensure returns the system user name, creating it when missing with
// `useradd --system --no-create-home --home-dir /nonexistent --shell
// /usr/sbin/nologin` (no home, no login, no password). Creating needs
// root. It is idempotent and safe to call concurrently, also with another
// process creating the same user.
func Ensure(ctx context.Context, name string) (User, error) {
	if name == "" || strings.ContainsAny(name, ":/\n") || strings.HasPrefix(name, "-") {
		return User{}, fmt.Errorf("invalid user name %q", name)
	}
	mu.Lock()
	defer mu.Unlock()
	u, err := Lookup(name)
	var unknown user.UnknownUserError
	if err == nil || !errors.As(err, &unknown) {
		return u, err
	}
	if os.Geteuid() != 0 {
		return User{}, fmt.Errorf("user %s does not exist and only root can create it", name)
	}
	bin, lerr := exec.LookPath("useradd")
	if lerr != nil {
		return User{}, fmt.Errorf("user %s does not exist and useradd is not installed (apt-get install passwd): %w", name, lerr)
	}
	out, err := exec.CommandContext(ctx, bin, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
		"--comment", "banger VMM processes", name).CombinedOutput()
	if err != nil {
		// Exit status 9: someone else created it meanwhile.
		if u, lerr := Lookup(name); lerr == nil {
			return u, nil
		}
		return User{}, fmt.Errorf("create user %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return Lookup(name)
}
