package files

import "testing"

func TestWorkDiskPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{"/root", "/", false},
		{"/root/repo/a.go", "/repo/a.go", false},
		{"/home/user", "/.banger/home/user", false},
		{"/home/user/.bashrc", "/.banger/home/user/.bashrc", false},
		{"/home/username", "", true},
		{"/rootkit", "", true},
		{"/etc/passwd", "", true},
	} {
		got, err := WorkDiskPath(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("WorkDiskPath(%q) = %q, %v; want %q, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}
