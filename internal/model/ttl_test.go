package model

import (
	"strings"
	"testing"
	"time"
)

func TestParseTTL(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"90s": 90 * time.Second, "10m": 10 * time.Minute, "2h": 2 * time.Hour, "1h30m": 90 * time.Minute,
		"7d": 7 * 24 * time.Hour, " 20s ": 20 * time.Second, "720h": MaxTTL, "30d": MaxTTL, "1s": time.Second,
	} {
		if got, err := ParseTTL(in); err != nil || got != want {
			t.Errorf("ParseTTL(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"": "invalid", "abc": "invalid", "10": "invalid", "-5m": "too short", "0s": "too short",
		"500ms": "too short", "721h": "too long", "31d": "too long", "1.5d": "invalid", "d": "invalid",
		"none": "invalid",
	} {
		if _, err := ParseTTL(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseTTL(%q) = %v, want an error with %q", in, err, msg)
		}
	}
}

func TestValidateTTLAction(t *testing.T) {
	for _, a := range []string{"", TTLDelete, TTLStop, TTLPause} {
		if err := ValidateTTLAction(a); err != nil {
			t.Errorf("%q: %v", a, err)
		}
	}
	if err := ValidateTTLAction("suspend"); err == nil {
		t.Error("pause accepted")
	}
}

func TestFormatTTL(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 45 * time.Second: "45s", 12*time.Minute + 30*time.Second: "12m30s",
		3*time.Hour + 5*time.Minute: "3h05m", 52 * time.Hour: "2d4h",
	} {
		if got := FormatTTL(d); got != want {
			t.Errorf("FormatTTL(%v) = %q, want %q", d, got, want)
		}
	}
}
