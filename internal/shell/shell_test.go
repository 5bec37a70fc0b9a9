package shell

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"abc", "abc"},
		{"/usr/bin/env", "/usr/bin/env"},
		{"a-b_c.d:e,f@g%h+i", "a-b_c.d:e,f@g%h+i"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"'", `''\'''`},
		{"$HOME", "'$HOME'"},
		{"`id`", "'`id`'"},
		{"FOO=bar", "'FOO=bar'"},
		{"~", "'~'"},
		{"a\nb", "'a\nb'"},
		{"*", "'*'"},
		{"-n", "-n"},
		{"é", "'é'"},
	}
	for _, tt := range tests {
		if got := Quote(tt.in); got != tt.want {
			t.Errorf("Quote(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCommand(t *testing.T) {
	tests := []struct {
		argv []string
		want string
	}{
		{nil, ""},
		{[]string{"ls"}, "ls"},
		{[]string{"echo", "a b", ""}, "echo 'a b' ''"},
		{[]string{"FOO=1", "env"}, "'FOO=1' env"},
		{[]string{"sh", "-c", "echo $1", "x"}, "sh -c 'echo $1' x"},
	}
	for _, tt := range tests {
		if got := Command(tt.argv); got != tt.want {
			t.Errorf("Command(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}
}

// shellRoundTrip has /bin/sh print Quote(s) back.
func shellRoundTrip(t *testing.T, s string) string {
	t.Helper()
	out, err := exec.Command("/bin/sh", "-c", "printf %s "+Quote(s)).Output()
	if err != nil {
		t.Fatalf("sh -c printf %%s %s: %v", Quote(s), err)
	}
	return string(out)
}

var trickyStrings = []string{
	"", " ", "'", "''", `"`, `\`, `\'`, "'\\''", "$", "$(id)", "${HOME}", "`id`",
	"a\nb", "\n", "\t", "!", "!!", "#", "*", "?", "[a]", "{a,b}", "~root", "a;b", "a|b",
	"a&b", "a>b", "<", "(", ")", "FOO=bar", "-e", "--", "%s", "é\u00a0ü", "\x01\x7f\xff",
	"it's a \"test\" with $vars and `cmds` and \\n",
}

func TestQuoteShellRoundTrip(t *testing.T) {
	for _, s := range trickyStrings {
		if got := shellRoundTrip(t, s); got != s {
			t.Errorf("sh printed %q for Quote(%q) = %s", got, s, Quote(s))
		}
	}
	// Command keeps every argument apart and intact.
	argv := append([]string{"printf", "<%s>"}, trickyStrings...)
	out, err := exec.Command("/bin/sh", "-c", Command(argv)).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, s := range trickyStrings {
		want.WriteString("<" + s + ">")
	}
	if string(out) != want.String() {
		t.Errorf("Command round trip:\n got %q\nwant %q", out, want.String())
	}
}

func FuzzQuote(f *testing.F) {
	for _, s := range trickyStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.IndexByte(s, 0) >= 0 {
			t.Skip("a shell word cannot hold NUL")
		}
		if got := shellRoundTrip(t, s); got != s {
			t.Errorf("sh printed %q for Quote(%q) = %s", got, s, Quote(s))
		}
	})
}

func TestBashCommand(t *testing.T) {
	tests := []struct {
		script string
		env    map[string]string
		want   string
	}{
		{"echo 'hi'", map[string]string{"B": "x y", "A": "it's", "bad name": "z"}, `A='it'\''s' B='x y' bash -c 'echo '\''hi'\'''`},
		{"echo hi", nil, `bash -c 'echo hi'`},
		{"true", nil, `bash -c true`},
		{"", map[string]string{"E": ""}, `E='' bash -c ''`},
		{"x", map[string]string{"1A": "v", "A-B": "v", "": "v", "Z": "/a"}, `Z=/a bash -c x`},
	}
	for _, tt := range tests {
		if got := BashCommand(tt.script, tt.env); got != tt.want {
			t.Errorf("BashCommand(%q, %q) = %q, want %q", tt.script, tt.env, got, tt.want)
		}
	}
}

// TestBashCommandShell runs BashCommand's line through sh: bash gets the
// script and the environment intact.
func TestBashCommandShell(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	env := map[string]string{"B": "x y", "A": "it's $HOME `id`", "C": "", "D": "~root"}
	script := `printf '<%s>' "$A" "$B" "$C" "$D" "$0"`
	out, err := exec.Command("/bin/sh", "-c", BashCommand(script, env)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "<it's $HOME `id`><x y><><~root><bash>"; string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
}

func TestValidEnvKey(t *testing.T) {
	for k, want := range map[string]bool{
		"A": true, "_": true, "a_1": true, "PATH": true, "_9": true,
		"": false, "1A": false, "A-B": false, "A B": false, "A=B": false, "é": false, "A\n": false, "A$": false,
	} {
		if got := ValidEnvKey(k); got != want {
			t.Errorf("ValidEnvKey(%q) = %v, want %v", k, got, want)
		}
	}
}

// FuzzValidEnvKey checks ValidEnvKey against the shell's name grammar
// written as a regular expression.
func FuzzValidEnvKey(f *testing.F) {
	re := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	for _, s := range []string{"", "A", "1A", "a_b", "A\n", "é", "A-B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, k string) {
		if got, want := ValidEnvKey(k), re.MatchString(k); got != want {
			t.Errorf("ValidEnvKey(%q) = %v, grammar says %v", k, got, want)
		}
	})
}
