package model

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// What the daemon does to a VM when its deadline passes.
// TTLPause saves the VM's whole state and ends its VMM, as `banger vm
// pause` does (a VM whose VMM cannot pause is stopped instead).
const (
	TTLDelete = "delete"
	TTLStop   = "stop"
	TTLPause  = "pause"
)

// TTLNone clears a VM's deadline where a TTL is asked for.
const TTLNone = "none"

// MaxTTL bounds a deadline: a VM meant to outlive it wants none.
const MaxTTL = 30 * 24 * time.Hour

// ParseTTL parses a time to live: Go duration syntax ("90s", "10m",
// "1h30m") or whole days ("7d"), positive and at most MaxTTL.
func ParseTTL(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok && n != "" && !strings.ContainsAny(n, "hmsuµn") {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("invalid ttl %q: use a duration such as 90s, 10m, 2h or 7d", s)
		}
		if days > int(MaxTTL/(24*time.Hour)) {
			return 0, fmt.Errorf("ttl %s is too long: at most %s", s, FormatTTL(MaxTTL))
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("invalid ttl %q: use a duration such as 90s, 10m, 2h or 7d", s)
		}
	}
	if d < time.Second {
		return 0, fmt.Errorf("ttl %s is too short: use at least 1s", s)
	}
	if d > MaxTTL {
		return 0, fmt.Errorf("ttl %s is too long: at most %s", s, FormatTTL(MaxTTL))
	}
	return d, nil
}

// ValidateTTLAction checks what to do at the deadline ("" is TTLDelete).
func ValidateTTLAction(a string) error {
	switch a {
	case "", TTLDelete, TTLStop, TTLPause:
		return nil
	}
	return fmt.Errorf("invalid ttl action %q: use delete, stop or pause", a)
}

// FormatTTL is a short human form of a remaining time, e.g. "45s",
// "12m30s", "3h5m", "2d4h".
func FormatTTL(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}
