package failpoint

import (
	"slices"
	"testing"
)

func TestDefine(t *testing.T) {
	name := Define("regtest.after-step", "a test point")
	if name != "regtest.after-step" {
		t.Fatalf("Define returned %q", name)
	}
	i := slices.IndexFunc(All(), func(p Point) bool { return p.Name == name })
	if i < 0 || All()[i].Stage != "regtest" || All()[i].Doc != "a test point" {
		t.Fatalf("All() = %+v, want regtest.after-step of stage regtest", All())
	}
	if !slices.IsSortedFunc(All(), func(a, b Point) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	}) {
		t.Fatalf("All() not sorted: %+v", All())
	}
	if got := Parse("regtest.after-step, regtest.typo").Unknown(); !slices.Equal(got, []string{"regtest.typo"}) {
		t.Fatalf("Unknown() = %v, want [regtest.typo]", got)
	}
	for _, bad := range []string{"nostage", ".step", "stage.", "a.b,c", "a.b c", name} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Define(%q) did not panic", bad)
				}
			}()
			Define(bad, "")
		}()
	}
}
