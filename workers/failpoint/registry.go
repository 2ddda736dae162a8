package failpoint

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Point is a failpoint as its package defines it: the crash matrix
// (cmd/strata/crashmatrix_test.go) enumerates every one, so a new
// failpoint is tried on every filesystem without anyone listing it.
type Point struct {
	Name  string // "<stage>.<step>", the name armed in STRATA_FAILPOINTS
	Stage string // the part of Name before the first dot
	Doc   string // what is durable and what is not when it fires
}

var registry struct {
	sync.Mutex
	points map[string]Point
}

// Define registers a failpoint and returns its name, for package-level
// variables:
//
//	var FailAfterPut = failpoint.Define("store.after-put", "verified Put done, object.stored not yet published")
//
// A name must have the form "<stage>.<step>" and be defined once; anything
// else is a programming error and panics at init.
func Define(name, doc string) string {
	stage, step, ok := strings.Cut(name, ".")
	if !ok || stage == "" || step == "" || strings.ContainsAny(name, ", \t\n") {
		panic(fmt.Sprintf("failpoint.Define(%q): want a name <stage>.<step> without commas or spaces", name))
	}
	registry.Lock()
	defer registry.Unlock()
	if registry.points == nil {
		registry.points = map[string]Point{}
	}
	if _, dup := registry.points[name]; dup {
		panic(fmt.Sprintf("failpoint.Define(%q): defined twice", name))
	}
	registry.points[name] = Point{Name: name, Stage: stage, Doc: doc}
	return name
}

// All returns every failpoint defined by the packages linked into the
// program, sorted by name.
func All() []Point {
	registry.Lock()
	defer registry.Unlock()
	out := make([]Point, 0, len(registry.points))
	for _, p := range registry.points {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Point) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Unknown returns the names of s that no linked package defines (a typo in
// STRATA_FAILPOINTS arms nothing: the daemon warns about it).
func (s Set) Unknown() []string {
	registry.Lock()
	defer registry.Unlock()
	var out []string
	for name := range s.armed {
		if _, ok := registry.points[name]; !ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
