package e2b

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
)

// KeyPrefix starts every API key banger makes, as E2B's keys do.
const KeyPrefix = "e2b_"

// NewKey returns a fresh random API key (160 bits).
func NewKey() string {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return KeyPrefix + hex.EncodeToString(b[:])
}

// HashKey is what is stored of a key: hex sha256. Keys are random and
// long, so a fast hash is enough to make a leaked database useless.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// KeyOf is the API key a request presents: X-API-Key, else
// "Authorization: Bearer"; "" when none.
func KeyOf(h http.Header) string {
	if k := strings.TrimSpace(h.Get("X-API-Key")); k != "" {
		return k
	}
	if a := h.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	return ""
}

// newToken is a sandbox's envd access token.
func newToken() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// newSandboxID is a sandbox id, also its VM's name: "e2b" and 12 hex
// digits (a valid VM name without '-', so Host routing splits it cleanly).
func newSandboxID() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return "e2b" + hex.EncodeToString(b[:])
}
