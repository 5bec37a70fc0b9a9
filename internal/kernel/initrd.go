package kernel

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
)

// cpioFile is one member of an initrd archive.
type cpioFile struct {
	Name string // path inside the archive, without a leading slash
	Mode uint32 // permission bits
	Kind byte   // 'd' directory, 'f' regular file, 'l' symlink (Data is the target), 'c' character device
	Data []byte
	Rdev [2]uint32 // major, minor of a character device
}

// writeCPIO renders files as a "newc" cpio archive, the format the kernel
// unpacks as an initramfs. Members are written in the order given; parent
// directories must come before their children.
func writeCPIO(files []cpioFile) ([]byte, error) {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	header := func(ino int, mode uint32, size int, rdev [2]uint32, name string) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(name)+1, 0)
		b.WriteString(name)
		b.WriteByte(0)
		pad()
	}
	for i, f := range files {
		if f.Name == "" || strings.HasPrefix(f.Name, "/") {
			return nil, fmt.Errorf("cpio member %q: want a relative path", f.Name)
		}
		var mode uint32
		switch f.Kind {
		case 'd':
			mode = 0o040000
		case 'f':
			mode = 0o100000
		case 'l':
			mode = 0o120000
		case 'c':
			mode = 0o020000
		default:
			return nil, fmt.Errorf("cpio member %q: kind %q (allowed: d, f, l, c)", f.Name, f.Kind)
		}
		header(i+1, mode|f.Mode&0o7777, len(f.Data), f.Rdev, f.Name)
		b.Write(f.Data)
		pad()
	}
	header(0, 0, 0, [2]uint32{}, "TRAILER!!!")
	return b.Bytes(), nil
}

// busyboxApplets are the commands /init uses, linked to busybox.
var busyboxApplets = []string{"sh", "mount", "umount", "insmod", "switch_root", "sleep", "cat", "mkdir", "reboot", "echo", "test", "["}

// initScript is the initrd's /init: load the modules in order, find root=
// (and init=, ro) on the kernel command line, wait for the root device,
// mount it, move the kernel filesystems over and switch_root into the real
// init. A failure reboots, which ends the VMM instead of hanging it.
func initScript(modules []string) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
# banger initrd: load drivers, mount root=, switch_root.
fail() { echo "banger initrd: $*" >/dev/console; sleep 1; reboot -f; }
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs -o mode=0755 devtmpfs /dev
`)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod /lib/modules/%s.ko || echo \"banger initrd: insmod %s failed\" >/dev/console\n", m, m)
	}
	b.WriteString(`root=
init=/sbin/init
opts=rw
# The command line is words, not lines.
# shellcheck disable=SC2013
for p in $(cat /proc/cmdline); do
	case "$p" in
	root=*) root="${p#root=}" ;;
	init=*) init="${p#init=}" ;;
	ro) opts=ro ;;
	rw) opts=rw ;;
	esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"
n=0
while [ ! -b "$root" ]; do
	n=$((n + 1))
	[ "$n" -le 500 ] || fail "root device $root did not appear within 10s"
	sleep 0.02
done
mount -t ext4 -o "$opts" "$root" /newroot || fail "cannot mount $root as ext4"
mount --move /dev /newroot/dev || fail "cannot move /dev"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot "$init"
`)
	return b.String()
}

// buildInitrd assembles the initrd from a static busybox and the named
// module files (name -> content), loaded in the given order.
func buildInitrd(busybox []byte, order []string, kos map[string][]byte) ([]byte, error) {
	files := []cpioFile{
		{Name: "bin", Mode: 0o755, Kind: 'd'},
		{Name: "bin/busybox", Mode: 0o755, Kind: 'f', Data: busybox},
		{Name: "dev", Mode: 0o755, Kind: 'd'},
		// The kernel opens /dev/console for /init before devtmpfs exists.
		{Name: "dev/console", Mode: 0o600, Kind: 'c', Rdev: [2]uint32{5, 1}},
		{Name: "proc", Mode: 0o755, Kind: 'd'},
		{Name: "sys", Mode: 0o755, Kind: 'd'},
		{Name: "newroot", Mode: 0o755, Kind: 'd'},
		{Name: "lib", Mode: 0o755, Kind: 'd'},
		{Name: "lib/modules", Mode: 0o755, Kind: 'd'},
		{Name: "init", Mode: 0o755, Kind: 'f', Data: []byte(initScript(order))},
	}
	applets := append([]string(nil), busyboxApplets...)
	sort.Strings(applets)
	for _, a := range applets {
		files = append(files, cpioFile{Name: "bin/" + a, Mode: 0o777, Kind: 'l', Data: []byte("busybox")})
	}
	for _, m := range order {
		ko, ok := kos[m]
		if !ok {
			return nil, fmt.Errorf("initrd: module %s has no file", m)
		}
		files = append(files, cpioFile{Name: "lib/modules/" + m + ".ko", Mode: 0o644, Kind: 'f', Data: ko})
	}
	return writeCPIO(files)
}
