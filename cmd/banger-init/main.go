// Command banger-init is the boot hook of banger's guest images.
//
// Run as PID 1 (images built with --init fast, /sbin/init points here) it
// mounts the kernel filesystems, configures the guest from the banger.*
// kernel parameters (hostname, hosts, resolv.conf, eth0, the work disk at
// /root, the daemon's SSH key, the VM's own host key from the work disk),
// runs sshd and keeps it running, serves the control channel
// (internal/guestctl) on its virtio-serial port, reaps orphans, and on a
// stop request (Ctrl-Alt-Del as SIGINT, SIGTERM, SIGPWR, the ACPI power
// key or the control channel's poweroff) shuts down cleanly and reboots,
// which ends the VMM.
//
// `banger-init setup` does only the configuration steps, for images whose
// PID 1 is systemd (a oneshot unit ordered before ssh.service), and
// `banger-init watch-power` turns the ACPI power key into `systemctl
// reboot` there (minimal images have no logind, which would otherwise do it).
// `banger-init recv` receives a stream from the daemon over the data
// channel of internal/transfer (workspaces use it: it is much faster than
// the SSH session under software emulation). `banger-init envd` serves
// E2B's in-sandbox API (internal/envd) on port 49983.
//
// It owns nothing on the host; the parsing and rendering live in
// internal/guestinit so they can be tested without a guest.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "setup" {
		if err := setup(); err != nil {
			fmt.Fprintln(os.Stderr, "banger-init setup:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "recv" {
		os.Exit(recv(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "envd" {
		os.Exit(runEnvd(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "watch-power" {
		watchPowerSystemd()
		return
	}
	if len(os.Args) > 1 {
		fmt.Fprintf(os.Stderr, "banger-init: unknown argument %q (allowed: none, to run as PID 1; \"setup\"; \"watch-power\"; \"recv\"; \"envd\")\n", os.Args[1])
		os.Exit(2)
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "banger-init: without arguments it must run as PID 1; use \"setup\" to configure only")
		os.Exit(2)
	}
	runPID1()
}
