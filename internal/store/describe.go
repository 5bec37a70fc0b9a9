package store

import (
	"errors"

	"github.com/banger/banger/internal/errdefs"
)

// Describe turns a store error about the object kind named ref ("vm",
// "dev") into an error of the matching kind (not found, invalid for an
// ambiguous prefix, conflict), worded for the user. Other errors pass
// through; nil stays nil.
func Describe(kind, ref string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound):
		return errdefs.NotFound(kind, ref)
	case errors.Is(err, ErrAmbiguous):
		return errdefs.Errorf(errdefs.CodeInvalid, "%s %q is ambiguous: several match that id prefix; use the name or a longer id", kind, ref)
	case errors.Is(err, ErrConflict):
		return errdefs.Errorf(errdefs.CodeConflict, "%s", err.Error())
	}
	return err
}
