// Package errdefs holds banger's error kinds: an error carrying a code
// (not found, invalid, conflict, unavailable, timeout, internal) that every
// layer can make and test, and that the API maps to a status and carries
// over the wire as {"error": "...", "code": "..."}.
//
// It is pure: no I/O, no HTTP. The mapping of codes to HTTP statuses lives
// in package api.
package errdefs

import (
	"errors"
	"fmt"
)

// Error codes.
const (
	CodeNotFound    = "not_found"
	CodeInvalid     = "invalid"
	CodeConflict    = "conflict"
	CodeInternal    = "internal"
	CodeUnavailable = "unavailable" // a host capability is missing
	CodeTimeout     = "timeout"
)

// Error is an error with a code. Its JSON form is the API's error body.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
}

func (e *Error) Error() string { return e.Message }

// Errorf makes an *Error with code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// NotFound is the error for an unknown object: `vm "x" not found`.
func NotFound(kind, ref string) *Error {
	return Errorf(CodeNotFound, "%s %q not found", kind, ref)
}

// Invalid wraps a validation error.
func Invalid(err error) *Error {
	return &Error{Code: CodeInvalid, Message: err.Error()}
}

// CodeOf returns the code of err, or CodeInternal.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// IsNotFound reports whether err carries CodeNotFound.
func IsNotFound(err error) bool { return CodeOf(err) == CodeNotFound }
