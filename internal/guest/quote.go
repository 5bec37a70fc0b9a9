package guest

import "strings"

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
// Quote, so that the guest's shell runs argv[0] with exactly argv[1:].
func Command(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}
