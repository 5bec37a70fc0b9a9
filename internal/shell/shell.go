// Package shell owns how banger writes text for a POSIX shell: quoting one
// word (Quote), joining an argv into a command line (Command), wrapping a
// bash script with its environment as one command line for a login shell
// (BashCommand), and the rule for environment variable names (ValidEnvKey).
//
// It is pure: no I/O, no processes, no knowledge of guests or SSH. Callers
// that run the command lines own the transport.
package shell

import (
	"sort"
	"strings"
)

// Quote quotes s as one word for a POSIX shell: s itself when it holds only
// characters no shell gives a meaning to (letters, digits and _@%+:,./-),
// otherwise s in single quotes, each single quote of s written as
//
//	'\''
//
// (end the quoted part, an escaped quote, quote again). The shell reads it
// back as exactly s. A shell word cannot hold a NUL byte: s must not contain
// one.
func Quote(s string) string {
	if s != "" && strings.IndexFunc(s, unsafeRune) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// unsafeRune reports runes that need quoting. '=' is unsafe because a
// leading NAME=value word is an assignment, '~' because of tilde expansion.
func unsafeRune(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return false
	}
	return !strings.ContainsRune("_@%+:,./-", r)
}

// Command joins argv into one shell command line, each element quoted by
// Quote, so that the shell runs argv[0] with exactly argv[1:].
func Command(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

// BashCommand is the command line that runs script with bash through a
// POSIX shell (what an SSH exec request runs):
//
//	K1=V1 K2=V2 bash -c '<script>'
//
// with env as prefix assignments in sorted key order, so that the line is
// deterministic. Keys that fail ValidEnvKey are dropped: as a prefix they
// would not be assignments but the command word. With no env it is just
// bash -c '<script>'.
func BashCommand(script string, env map[string]string) string {
	keys := make([]string, 0, len(env))
	for k := range env {
		if ValidEnvKey(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + "=" + Quote(env[k]) + " ")
	}
	b.WriteString("bash -c " + Quote(script))
	return b.String()
}

// ValidEnvKey reports whether k is a shell variable name: ASCII letters,
// digits and '_', not empty and not starting with a digit. Only such names
// can be assigned or exported by a shell.
func ValidEnvKey(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
