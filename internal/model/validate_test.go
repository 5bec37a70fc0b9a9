package model

import (
	"strings"
	"testing"
	"unicode"
)

func TestValidateName(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"0", true},
		{"my-vm-2", true},
		{long, true},
		{long + "a", false},
		{"", false},
		{"-a", false},
		{"A", false},
		{"a_b", false},
		{"a.b", false},
		{"a b", false},
		{"a\n", false},
		{"é", false},
		{"a/b", false},
		{"a-", true},
	} {
		err := ValidateName("vm", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "vm name") || !strings.Contains(err.Error(), "a-z, 0-9")) {
			t.Errorf("ValidateName(%q) message %q does not name the kind and what is allowed", tc.name, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64 // 0: an error is expected
	}{
		{"512", 512},
		{"1K", 1024},
		{"1k", 1024},
		{"512M", 512 << 20},
		{"2G", 2 << 30},
		{"2GiB", 2 << 30},
		{"2gb", 2 << 30},
		{"1.5G", 3 << 29},
		{".5K", 512},
		{"1T", 1 << 40},
		{" 4G ", 4 << 30},
		{"4 G", 4 << 30},
		{"10B", 10},
		{"", 0},
		{"G", 0},
		{"0", 0},
		{"0G", 0},
		{"-1G", 0},
		{"+1G", 0},
		{"1e3", 0},
		{"NaN", 0},
		{"nanG", 0},
		{"Inf", 0},
		{"0x10", 0},
		{"0X1P4", 0},
		{"1_000", 0},
		{"1.2.3", 0},
		{"2iB", 0},
		{"2X", 0},
		{"0.5", 0},
		{"99999999T", 0},
		{"1..5G", 0},
	} {
		got, err := ParseSize(tc.in)
		if tc.want == 0 {
			if err == nil {
				t.Errorf("ParseSize(%q) = %d, want an error", tc.in, got)
			} else if !strings.Contains(err.Error(), "size") {
				t.Errorf("ParseSize(%q) error %q does not say it is about a size", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestFormatSizeRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{512, "512B"},
		{1024, "1K"},
		{1536, "1.5K"},
		{2 << 30, "2G"},
		{1 << 40, "1T"},
	} {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
		back, err := ParseSize(tc.want)
		if err != nil || back != tc.in {
			t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", tc.in, back, err)
		}
	}
}

func TestIDs(t *testing.T) {
	a, b := NewID(), NewID()
	if len(a) != 32 || a == b || strings.Trim(a, "0123456789abcdef") != "" {
		t.Fatalf("NewID = %q, %q", a, b)
	}
	if ShortID(a) != a[:8] || ShortID("abc") != "abc" {
		t.Fatalf("ShortID(%q) = %q", a, ShortID(a))
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "my-vm", "-x", "A", "a\n", strings.Repeat("z", 64), "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName("image", name)
		// The rule spelled out without a regexp.
		ok := len(name) >= 1 && len(name) <= 63 && name[0] != '-'
		for _, c := range []byte(name) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				ok = false
			}
		}
		if (err == nil) != ok {
			t.Fatalf("ValidateName(%q) = %v, rule says ok=%v", name, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "image name") {
			t.Fatalf("message %q does not name the kind", err)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"512M", "2GiB", "1.5G", "0", "-1", "NaN", "1e9", "0x1p4", " 3 k ", "99999999999T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			if v != 0 {
				t.Fatalf("ParseSize(%q) = %d with error %v", s, v, err)
			}
			return
		}
		if v < 1 || v >= 1<<62 {
			t.Fatalf("ParseSize(%q) = %d, out of range", s, v)
		}
		for _, c := range strings.ToUpper(s) {
			if !strings.ContainsRune("0123456789.KMGTIB", c) && !unicode.IsSpace(c) {
				t.Fatalf("ParseSize(%q) accepted %q", s, c)
			}
		}
		// Formatting and parsing again lands within rounding of the value.
		back, err := ParseSize(FormatSize(v))
		if err != nil {
			t.Fatalf("ParseSize(FormatSize(%d)=%q): %v", v, FormatSize(v), err)
		}
		if d := back - v; d > v/10+1 || d < -(v/10+1) {
			t.Fatalf("round trip %d → %q → %d", v, FormatSize(v), back)
		}
	})
}

func TestValidateLogSource(t *testing.T) {
	for _, ok := range []string{"", LogConsole, LogVMM, LogAll} {
		if err := ValidateLogSource(ok); err != nil {
			t.Errorf("ValidateLogSource(%q) = %v", ok, err)
		}
	}
	if err := ValidateLogSource("disk"); err == nil || !strings.Contains(err.Error(), "console, vmm or all") {
		t.Errorf(`ValidateLogSource("disk") = %v, want the choices named`, err)
	}
}
