package model

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Labels are a VM's key=value tags, set when it is made and used to find
// it again (`banger vm list --label`): the E2B control plane keeps a
// sandbox's metadata in them, and other front ends may keep their own
// names (e.g. a pod's namespace, name and UID).
//
// A key follows Kubernetes' rule for label keys: an optional prefix (a
// lowercase DNS subdomain of at most 253 characters) and "/", then a name
// of 1 to 63 characters from [A-Za-z0-9-_.], starting and ending with a
// letter or digit. A value is looser than Kubernetes': at most
// MaxLabelValue bytes of UTF-8 without control characters (so that free
// text such as E2B metadata fits); empty is allowed.
const (
	MaxLabels     = 64
	MaxLabelValue = 256
)

var (
	labelName  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	labelRules = "a key is [PREFIX/]NAME: NAME 1-63 characters of [A-Za-z0-9-_.] starting and ending with a letter or digit, PREFIX a lowercase DNS name; a value at most 256 bytes without control characters"
)

// ValidateLabel checks one label's key and value.
func ValidateLabel(key, value string) error {
	name := key
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		prefix := key[:i]
		name = key[i+1:]
		if prefix == "" || len(prefix) > 253 {
			return fmt.Errorf("label key %q: bad prefix (%s)", key, labelRules)
		}
		for _, part := range strings.Split(prefix, ".") {
			if !dnsLabel.MatchString(part) {
				return fmt.Errorf("label key %q: prefix %q is not a lowercase DNS name (%s)", key, prefix, labelRules)
			}
		}
	}
	if !labelName.MatchString(name) {
		return fmt.Errorf("label key %q is invalid (%s)", key, labelRules)
	}
	if len(value) > MaxLabelValue || !utf8.ValidString(value) || strings.IndexFunc(value, unicode.IsControl) >= 0 {
		return fmt.Errorf("label %s: value %q is invalid (%s)", key, value, labelRules)
	}
	return nil
}

// ValidateLabels checks a whole set of labels.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels: at most %d", len(labels), MaxLabels)
	}
	for _, k := range SortedLabelKeys(labels) {
		if err := ValidateLabel(k, labels[k]); err != nil {
			return err
		}
	}
	return nil
}

// ParseLabels reads "KEY=VALUE" arguments (each once; the value may hold
// '=') into a validated set; nil when there are none.
func ParseLabels(args []string) (map[string]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(args))
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return nil, fmt.Errorf("label %q: want KEY=VALUE", a)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("label %s given twice", k)
		}
		out[k] = v
	}
	return out, ValidateLabels(out)
}

// LabelSelector picks VMs by their labels: every Equal pair must match
// and every key in Has must be present. The zero value picks all.
type LabelSelector struct {
	Equal map[string]string
	Has   []string
}

// ParseLabelSelector reads selector terms, each "KEY=VALUE" (equal) or
// "KEY" (present); a term may also hold several separated by commas
// when no value holds one.
func ParseLabelSelector(terms []string) (LabelSelector, error) {
	var sel LabelSelector
	for _, t := range terms {
		for _, one := range splitTerms(t) {
			k, v, eq := strings.Cut(one, "=")
			if err := ValidateLabel(k, v); err != nil {
				return sel, err
			}
			if !eq {
				sel.Has = append(sel.Has, k)
				continue
			}
			if sel.Equal == nil {
				sel.Equal = map[string]string{}
			}
			if old, dup := sel.Equal[k]; dup && old != v {
				return sel, fmt.Errorf("label selector asks %s to be both %q and %q", k, old, v)
			}
			sel.Equal[k] = v
		}
	}
	return sel, nil
}

// splitTerms splits "a=1,b=2" at the commas that start a new KEY= or
// KEY term, so that one "k=v" whose value holds commas stays whole when
// the text after a comma is not a valid key.
func splitTerms(t string) []string {
	parts := strings.Split(t, ",")
	var out []string
	for _, p := range parts {
		k, _, _ := strings.Cut(p, "=")
		if len(out) > 0 && ValidateLabel(k, "") != nil {
			out[len(out)-1] += "," + p
			continue
		}
		out = append(out, p)
	}
	return out
}

// Empty says whether the selector picks every VM.
func (s LabelSelector) Empty() bool { return len(s.Equal) == 0 && len(s.Has) == 0 }

// Terms are the selector as terms ParseLabelSelector reads back, sorted.
func (s LabelSelector) Terms() []string {
	var out []string
	for _, k := range SortedLabelKeys(s.Equal) {
		out = append(out, k+"="+s.Equal[k])
	}
	out = append(out, s.Has...)
	return out
}

// Matches says whether labels satisfy the selector.
func (s LabelSelector) Matches(labels map[string]string) bool {
	for k, v := range s.Equal {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, k := range s.Has {
		if _, ok := labels[k]; !ok {
			return false
		}
	}
	return true
}

// SortedLabelKeys are the keys of labels in order.
func SortedLabelKeys(labels map[string]string) []string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// FormatLabels is labels as "k=v,k2=v2", sorted by key.
func FormatLabels(labels map[string]string) string {
	var b strings.Builder
	for i, k := range SortedLabelKeys(labels) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + labels[k])
	}
	return b.String()
}
