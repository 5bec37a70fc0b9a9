package model

import (
	"reflect"
	"strings"
	"testing"
)

func TestValidateLabel(t *testing.T) {
	good := [][2]string{{"app", "web"}, {"e2b.meta/userId", "a@b.example, free text"}, {"k8s.banger.dev/pod-uid", "0f1e"},
		{"a", ""}, {"A.b_c-9", "ü"}, {strings.Repeat("x", 63), strings.Repeat("v", MaxLabelValue)}}
	for _, kv := range good {
		if err := ValidateLabel(kv[0], kv[1]); err != nil {
			t.Errorf("ValidateLabel(%q, %q) = %v", kv[0], kv[1], err)
		}
	}
	bad := [][2]string{{"", "v"}, {"-a", "v"}, {"a-", "v"}, {"a b", "v"}, {strings.Repeat("x", 64), "v"},
		{"/a", "v"}, {"Upper.dev/a", "v"}, {"a..b/c", "v"}, {"p/", "v"}, {"a", "line\nbreak"}, {"a", "\x00"},
		{"a", strings.Repeat("v", MaxLabelValue+1)}, {"a", "\xff"}}
	for _, kv := range bad {
		if err := ValidateLabel(kv[0], kv[1]); err == nil {
			t.Errorf("ValidateLabel(%q, %q) = nil, want an error", kv[0], kv[1])
		}
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels([]string{"a=1", "b=x=y", "c="})
	if err != nil || !reflect.DeepEqual(got, map[string]string{"a": "1", "b": "x=y", "c": ""}) {
		t.Fatalf("ParseLabels = %v, %v", got, err)
	}
	for _, in := range [][]string{{"a"}, {"a=1", "a=2"}, {"bad key=1"}} {
		if _, err := ParseLabels(in); err == nil {
			t.Errorf("ParseLabels(%q) = nil error", in)
		}
	}
	if got, err := ParseLabels(nil); got != nil || err != nil {
		t.Errorf("ParseLabels(nil) = %v, %v", got, err)
	}
}

func TestLabelSelector(t *testing.T) {
	sel, err := ParseLabelSelector([]string{"a=1,b=2", "note=hello, world", "c"})
	if err != nil {
		t.Fatal(err)
	}
	want := LabelSelector{Equal: map[string]string{"a": "1", "b": "2", "note": "hello, world"}, Has: []string{"c"}}
	if !reflect.DeepEqual(sel, want) {
		t.Fatalf("selector = %+v, want %+v", sel, want)
	}
	if !sel.Matches(map[string]string{"a": "1", "b": "2", "note": "hello, world", "c": "", "x": "y"}) {
		t.Error("a superset does not match")
	}
	if sel.Matches(map[string]string{"a": "1", "b": "2", "note": "hello, world"}) {
		t.Error("a missing key matches")
	}
	if sel.Matches(map[string]string{"a": "2", "b": "2", "note": "hello, world", "c": ""}) {
		t.Error("a different value matches")
	}
	back, err := ParseLabelSelector(sel.Terms())
	if err != nil || !reflect.DeepEqual(back, sel) {
		t.Errorf("Terms round trip = %+v, %v", back, err)
	}
	if !(LabelSelector{}).Matches(nil) || !(LabelSelector{}).Empty() {
		t.Error("the empty selector must match everything")
	}
	if _, err := ParseLabelSelector([]string{"a=1", "a=2"}); err == nil {
		t.Error("a contradictory selector is accepted")
	}
	if _, err := ParseLabelSelector([]string{"bad key=1"}); err == nil {
		t.Error("a bad key is accepted")
	}
}

func TestFormatLabels(t *testing.T) {
	if got := FormatLabels(map[string]string{"b": "2", "a": "1"}); got != "a=1,b=2" {
		t.Errorf("FormatLabels = %q", got)
	}
}
