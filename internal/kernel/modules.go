package kernel

import (
	"bytes"
	"debug/elf"
	"fmt"
	"strings"
)

// modName normalises a module name: the kernel treats '-' and '_' alike.
func modName(s string) string {
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// moduleDepends reads the depends= field of a .ko file's .modinfo section.
func moduleDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("not an ELF module: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module has no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, modName(d))
				}
			}
		}
	}
	return deps, nil
}

// moduleOrder returns wanted and everything they depend on, each after its
// dependencies, so loading in that order with insmod succeeds. deps maps a
// module to its direct dependencies and must hold every module reached.
func moduleOrder(wanted []string, deps map[string][]string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(m string, chain []string) error
	visit = func(m string, chain []string) error {
		m = modName(m)
		switch state[m] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), m)
		}
		d, ok := deps[m]
		if !ok {
			if len(chain) == 0 {
				return fmt.Errorf("module %s not found in the kernel package", m)
			}
			return fmt.Errorf("module %s (needed by %s) not found in the kernel package", m, chain[len(chain)-1])
		}
		state[m] = 1
		for _, x := range d {
			if err := visit(x, append(chain, m)); err != nil {
				return err
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	for _, w := range wanted {
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
