package model

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// sizeNumRE is the number part of a size: decimal digits with at most one
// point. strconv.ParseFloat alone would also take "NaN", "Inf", hex floats
// and underscores.
var sizeNumRE = regexp.MustCompile(`^([0-9]+\.?[0-9]*|\.[0-9]+)$`)

// ValidateName checks a user-given name of a VM, image, kernel or session.
// kind ("vm", "image", …) is used in the error message.
func ValidateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%s name is empty: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", kind)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit", kind, name)
	}
	return nil
}

// ParseSize parses a size such as "512M", "2G", "2GiB", "1.5G" or a plain
// byte count. Units are binary (K=1024). It refuses negative, zero-less
// garbage and overflowing values with a message saying what is allowed.
func ParseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("size is empty: use a number with an optional unit K, M, G or T (e.g. 512M, 2G)")
	}
	u := strings.ToUpper(s)
	binary := strings.HasSuffix(u, "IB") // "GiB": only valid after a unit letter
	u = strings.TrimSuffix(u, "IB")
	u = strings.TrimSuffix(u, "B")
	mult := int64(1)
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			mult, u = 1<<10, u[:n-1]
		case 'M':
			mult, u = 1<<20, u[:n-1]
		case 'G':
			mult, u = 1<<30, u[:n-1]
		case 'T':
			mult, u = 1<<40, u[:n-1]
		}
	}
	u = strings.TrimSpace(u)
	bad := fmt.Errorf("invalid size %q: use a positive number with an optional unit K, M, G or T (e.g. 512M, 2G)", orig)
	if !sizeNumRE.MatchString(u) || (binary && mult == 1) {
		return 0, bad
	}
	f, err := strconv.ParseFloat(u, 64)
	if err != nil || f <= 0 {
		return 0, bad
	}
	v := f * float64(mult)
	if v >= 1<<62 {
		return 0, fmt.Errorf("invalid size %q: too large", orig)
	}
	if v < 1 {
		return 0, bad
	}
	return int64(v), nil
}

// FormatSize renders bytes with a binary unit, e.g. 2147483648 → "2G".
func FormatSize(b int64) string {
	units := []struct {
		s string
		v int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}}
	for _, u := range units {
		if b >= u.v {
			if b%u.v == 0 {
				return fmt.Sprintf("%d%s", b/u.v, u.s)
			}
			return fmt.Sprintf("%.1f%s", float64(b)/float64(u.v), u.s)
		}
	}
	return fmt.Sprintf("%dB", b)
}

// NewID returns a random, unguessable 128-bit identifier as 32 hex digits.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// ShortID is the prefix of an id shown in tables and used in default names.
func ShortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
