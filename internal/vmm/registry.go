package vmm

import (
	"context"
	"fmt"
	"strings"

	"github.com/banger/banger/internal/errdefs"
)

// Auto is the --vmm value (like "") that lets the Registry pick.
const Auto = "auto"

// Registry holds the drivers a daemon can use, in preference order. It is
// built once at start-up and read-only afterwards, so it is safe for
// concurrent use.
type Registry struct {
	drivers []Driver
}

// NewRegistry returns a registry of drivers, the preferred first: Pick's
// automatic choice and Owner's fallback follow this order. Names must be
// unique; a duplicate is a programming error and panics.
func NewRegistry(drivers ...Driver) *Registry {
	seen := map[string]bool{}
	for _, d := range drivers {
		if seen[d.Name()] {
			panic("vmm: driver " + d.Name() + " registered twice")
		}
		seen[d.Name()] = true
	}
	return &Registry{drivers: drivers}
}

// All returns the drivers in preference order.
func (r *Registry) All() []Driver { return append([]Driver(nil), r.drivers...) }

// Names returns the drivers' names in preference order.
func (r *Registry) Names() []string {
	names := make([]string, len(r.drivers))
	for i, d := range r.drivers {
		names[i] = d.Name()
	}
	return names
}

// Get returns the driver called name, or an invalid-argument error naming
// the known drivers.
func (r *Registry) Get(name string) (Driver, error) {
	for _, d := range r.drivers {
		if d.Name() == name {
			return d, nil
		}
	}
	return nil, errdefs.Errorf(errdefs.CodeInvalid, "unknown vmm %q: use %s", name, orList(r.Names()))
}

// Pick resolves a --vmm value to a driver this host can run. "" and Auto
// take the first available driver in preference order, and when none is
// available, report why the last one is not. A name takes that driver,
// which must be available. Errors: invalid for an unknown name,
// unavailable (with the driver's reason) for one the host cannot run.
func (r *Registry) Pick(ctx context.Context, want string) (Driver, error) {
	if want == "" || want == Auto {
		if len(r.drivers) == 0 {
			return nil, errdefs.Errorf(errdefs.CodeUnavailable, "no vmm driver is registered")
		}
		for _, d := range r.drivers[:len(r.drivers)-1] {
			if ok, _ := d.Available(ctx); ok {
				return d, nil
			}
		}
		want = r.drivers[len(r.drivers)-1].Name()
	}
	d, err := r.Get(want)
	if err != nil {
		return nil, err
	}
	if ok, reason := d.Available(ctx); !ok {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "vmm %s is not usable on this host: %s", want, reason)
	}
	return d, nil
}

// Owner names the driver that made vmDir, for a VM directory with no
// record: the first driver that Owns it, else the preferred driver (a
// driver may leave no file of its own, so no claim is not evidence
// against it). "" when the registry is empty.
func (r *Registry) Owner(vmDir string) string {
	for _, d := range r.drivers {
		if d.Owns(vmDir) {
			return d.Name()
		}
	}
	if len(r.drivers) == 0 {
		return ""
	}
	return r.drivers[0].Name()
}

// orList joins names as "a", "a or b", "a, b or c".
func orList(names []string) string {
	switch len(names) {
	case 0:
		return "no vmm (none registered)"
	case 1:
		return names[0]
	}
	return fmt.Sprintf("%s or %s", strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
}
