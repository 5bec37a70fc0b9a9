package image

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/shell"
)

// maskedUnits are systemd units a banger guest does not need; masking them
// saves seconds of boot under emulation. Minimal images have no udev device
// units for the serial console and no logind (no dbus): the gettys would
// wait for nothing, and banger-power.service handles the power key.
var maskedUnits = []string{
	"apt-daily.service", "apt-daily.timer", "apt-daily-upgrade.service", "apt-daily-upgrade.timer",
	"dpkg-db-backup.service", "dpkg-db-backup.timer", "e2scrub_all.service", "e2scrub_all.timer",
	"e2scrub_reap.service", "fstrim.service", "fstrim.timer", "getty@tty1.service", "getty-static.service",
	"serial-getty@ttyS0.service",
	"ldconfig.service", "systemd-firstboot.service", "systemd-hwdb-update.service",
	"systemd-journal-catalog-update.service", "systemd-machine-id-commit.service",
	"systemd-networkd-wait-online.service", "systemd-pstore.service", "systemd-timesyncd.service",
	"systemd-update-done.service", "systemd-binfmt.service", "dev-hugepages.mount", "dev-mqueue.mount",
	"sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount",
}

// setupUnit runs `banger-init setup` early, before sshd.
const setupUnit = `[Unit]
Description=banger guest configuration from the kernel command line
DefaultDependencies=no
After=systemd-remount-fs.service
Before=sysinit.target network.target ssh.service systemd-logind.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + guestinit.InitPath + ` setup
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
`

// powerUnit reboots on the ACPI power key (QEMU's stop request); systemd
// itself maps Ctrl-Alt-Del (Firecracker's) to reboot.target.
const powerUnit = `[Unit]
Description=banger: reboot on the power key
DefaultDependencies=no
After=banger-setup.service

[Service]
ExecStart=` + guestinit.InitPath + ` watch-power
Restart=on-failure

[Install]
WantedBy=sysinit.target
`

// systemdFiles are the files (path in the image -> content) systemd images
// get besides the common ones.
func systemdFiles() map[string]string {
	return map[string]string{
		"/etc/systemd/system/banger-setup.service": setupUnit,
		"/etc/systemd/system/banger-power.service": powerUnit,
	}
}

// defaultUserScript adds the unprivileged account commands run as unless
// root is asked for (E2B's templates have the same one): "user", uid and
// gid 1000, home /home/user, no password, passwordless sudo. It edits the
// account files directly, so it needs no chroot.
const defaultUserScript = `if ! grep -q '^user:' "$root"/etc/passwd; then
  echo 'user:x:1000:1000::/home/user:/bin/bash' >>"$root"/etc/passwd
  echo 'user:x:1000:' >>"$root"/etc/group
  if [ -f "$root"/etc/shadow ]; then echo 'user:*:20000:0:99999:7:::' >>"$root"/etc/shadow; fi
  if [ -f "$root"/etc/gshadow ]; then echo 'user:*::' >>"$root"/etc/gshadow; fi
  mkdir -p "$root"/home/user
  if [ -d "$root"/etc/skel ]; then cp -a "$root"/etc/skel/. "$root"/home/user/; fi
  chown -R 1000:1000 "$root"/home/user
  chmod 750 "$root"/home/user
fi
mkdir -p "$root"/etc/sudoers.d
echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' >"$root"/etc/sudoers.d/banger-user
chmod 440 "$root"/etc/sudoers.d/banger-user
`

// loginShellScript makes a login shell start without running programs:
// E2B's SDK runs every command as "bash -l -c CMD", and under a slow
// guest CPU each program a startup file runs costs as much as the
// command. /etc/profile asks id(1) for the uid that bash already has in
// $EUID (sh, without it, still asks id); root's ~/.profile runs mesg(1),
// which only means something on a terminal.
const loginShellScript = `if [ -f "$root"/etc/profile ]; then
  # shellcheck disable=SC2016 # the expressions are the new file's
  sed -i 's/"$(id -u)"/"${EUID:-$(id -u)}"/g' "$root"/etc/profile
fi
if [ -f "$root"/root/.profile ]; then
  sed -i 's#^mesg n 2> /dev/null || true$#if [ -t 0 ]; then mesg n 2> /dev/null || true; fi#' "$root"/root/.profile
fi
`

// customizeScript is the hook run with the new root's path as $1 after its
// packages are installed: it copies the overlay (banger-init, sshd config,
// host key, machine-id, user copies) in, keeps only the ed25519 host key,
// points /sbin/init at banger-init or sets up the systemd units, then runs
// each user script in the chroot, naming the one that failed.
// scriptNames and scriptPaths are parallel.
func customizeScript(overlay, init string, scripts []RecipeFile, scriptPaths []string) string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\nset -eu\nroot=\"$1\"\n")
	fmt.Fprintf(&b, "cp -a %s/. \"$root\"/\n", shell.Quote(overlay))
	b.WriteString(`rm -f "$root"/etc/ssh/ssh_host_rsa_key* "$root"/etc/ssh/ssh_host_ecdsa_key* "$root"/etc/ssh/ssh_host_dsa_key*
chmod 600 "$root"/etc/ssh/ssh_host_ed25519_key
chmod 755 "$root"` + guestinit.InitPath + "\n")
	b.WriteString(defaultUserScript)
	b.WriteString(loginShellScript)
	switch init {
	case InitSystemd:
		b.WriteString("mkdir -p \"$root\"/etc/systemd/system/sysinit.target.wants\n")
		b.WriteString("ln -sf ../banger-setup.service \"$root\"/etc/systemd/system/sysinit.target.wants/banger-setup.service\n")
		b.WriteString("ln -sf ../banger-power.service \"$root\"/etc/systemd/system/sysinit.target.wants/banger-power.service\n")
		units := append([]string(nil), maskedUnits...)
		sort.Strings(units)
		for _, u := range units {
			fmt.Fprintf(&b, "ln -sf /dev/null \"$root\"/etc/systemd/system/%s\n", shell.Quote(u))
		}
	default:
		fmt.Fprintf(&b, "ln -sf %s \"$root\"/sbin/init\n", shell.Quote(guestinit.InitPath))
	}
	for i, path := range scriptPaths {
		name := shell.Quote(scripts[i].Name)
		fmt.Fprintf(&b, "echo \"banger: running script \"%s\n", name)
		fmt.Fprintf(&b, "cp %s \"$root\"/tmp/banger-script\n", shell.Quote(path))
		fmt.Fprintf(&b, "if ! chroot \"$root\" /bin/sh /tmp/banger-script; then echo \"banger: script \"%s\" failed\"; rm -f \"$root\"/tmp/banger-script; exit 1; fi\n", name)
		b.WriteString("rm -f \"$root\"/tmp/banger-script\n")
	}
	b.WriteString("rm -rf \"$root\"/var/lib/apt/lists/* \"$root\"/var/cache/apt/*.bin\n")
	return b.String()
}

// HostMirror returns the Debian archive the host's apt uses (the only
// network a build may rely on), read from /etc/apt/sources.list and
// /etc/apt/sources.list.d/*.
func HostMirror() (string, error) {
	var oneLine, deb822 []string
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		oneLine = append(oneLine, string(b))
	}
	for _, pat := range []string{"*.list", "*.sources"} {
		paths, _ := filepath.Glob(filepath.Join("/etc/apt/sources.list.d", pat))
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			if strings.HasSuffix(p, ".sources") {
				deb822 = append(deb822, string(b))
			} else {
				oneLine = append(oneLine, string(b))
			}
		}
	}
	return parseMirror(oneLine, deb822)
}

// parseMirror finds the first "deb" source whose URI is a Debian archive
// (its path ends in /debian), in one-line files first, then deb822 files.
func parseMirror(oneLine, deb822 []string) (string, error) {
	isArchive := func(uri string) bool {
		u := strings.TrimRight(uri, "/")
		return (strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) && strings.HasSuffix(u, "/debian")
	}
	for _, file := range oneLine {
		for _, line := range strings.Split(file, "\n") {
			f := strings.Fields(strings.TrimSpace(line))
			if len(f) < 3 || f[0] != "deb" {
				continue
			}
			f = f[1:]
			if strings.HasPrefix(f[0], "[") { // options: [arch=amd64 signed-by=…]
				for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
					f = f[1:]
				}
				if len(f) > 0 {
					f = f[1:]
				}
			}
			if len(f) > 0 && isArchive(f[0]) {
				return strings.TrimRight(f[0], "/"), nil
			}
		}
	}
	for _, file := range deb822 {
		for _, stanza := range strings.Split(file, "\n\n") {
			fields := map[string]string{}
			for _, line := range strings.Split(stanza, "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "#") {
					continue
				}
				if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
					fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
				}
			}
			if !strings.Contains(" "+fields["types"]+" ", " deb ") || fields["enabled"] == "no" {
				continue
			}
			for _, uri := range strings.Fields(fields["uris"]) {
				if isArchive(uri) {
					return strings.TrimRight(uri, "/"), nil
				}
			}
		}
	}
	return "", fmt.Errorf("no Debian archive (a deb source whose URI ends in /debian) found in /etc/apt/sources.list or sources.list.d; configure one or pass a mirror")
}
