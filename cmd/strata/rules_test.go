package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// The layering rules of docs/DESIGN.md, as tests: each "never" of the
// design that a tool can check fails the build when it breaks.

const module = "github.com/strata-hsm/strata/"

// stagePackages are the stage packages: each one stage, one stage.go that
// says what it consumes and what it emits, talking to the others only
// through subjects.
var stagePackages = []string{
	"workers/scanner", "workers/compressor", "workers/store", "workers/tapewriter",
	"workers/releaser", "workers/interceptor", "workers/pruner", "workers/scrubber", "workers/modwatch",
}

type listedPackage struct {
	ImportPath string
	Dir        string
	Name       string
	Doc        string
	GoFiles    []string
	CgoFiles   []string
	Imports    []string
	Deps       []string
}

// goList lists every package of the module with its dependencies.
func goList(t *testing.T) []listedPackage {
	t.Helper()
	goTool := stratatest.NeedTool(t, "go")
	cmd := exec.Command(goTool, "list", "-json", "./...")
	cmd.Dir = moduleRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages: wrong directory?", len(pkgs))
	}
	return pkgs
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

func rel(importPath string) string { return strings.TrimPrefix(importPath, module) }

// TestRules checks the layering rules on every package of the module.
func TestRules(t *testing.T) {
	pkgs := goList(t)
	for _, p := range pkgs {
		name := rel(p.ImportPath)
		deps := map[string]bool{}
		for _, d := range p.Deps {
			deps[rel(d)] = true
		}

		// A stage never imports another stage, directly or not: stages
		// talk through subjects only.
		if slices.Contains(stagePackages, name) {
			for _, other := range stagePackages {
				if other != name && deps[other] {
					t.Errorf("stage %s depends on stage %s: stages talk only through subjects", name, other)
				}
			}
		}
		// Layers: events imports nothing of ours; pipeline only events;
		// projections never workers; workers never cmd.
		switch {
		case name == "events":
			for d := range deps {
				if strings.HasPrefix(d, "workers") || strings.HasPrefix(d, "pipeline") || strings.HasPrefix(d, "projections") || strings.HasPrefix(d, "cmd") {
					t.Errorf("events depends on %s: it is the bottom layer", d)
				}
			}
		case strings.HasPrefix(name, "pipeline"):
			for d := range deps {
				if strings.HasPrefix(d, "workers") || strings.HasPrefix(d, "projections") || strings.HasPrefix(d, "cmd") {
					t.Errorf("%s depends on %s: the pipeline sits below workers and projections", name, d)
				}
			}
		case strings.HasPrefix(name, "projections"):
			for d := range deps {
				if strings.HasPrefix(d, "workers") && !strings.HasSuffix(d, "stratatest") || strings.HasPrefix(d, "cmd") {
					t.Errorf("%s depends on %s: projections are built from events alone", name, d)
				}
			}
		}
		for d := range deps {
			if strings.HasPrefix(d, "cmd/") && !strings.HasPrefix(name, "cmd/") {
				t.Errorf("%s depends on %s: nothing below cmd imports it", name, d)
			}
			if strings.HasPrefix(d, "cmd/internal/") && strings.HasPrefix(name, "cmd/internal/") && name != d {
				t.Errorf("%s depends on %s: the CLI's helper packages stand alone", name, d)
			}
			if strings.HasPrefix(name, "cmd/internal/") && (strings.HasPrefix(d, "workers") || strings.HasPrefix(d, "projections") || strings.HasPrefix(d, "pipeline")) {
				t.Errorf("%s depends on %s: the CLI's helper packages know nothing of Strata's stages", name, d)
			}
		}

		// cgo (DuckDB) stays in projections/export: everything else builds
		// and tests without a C toolchain's help.
		if len(p.CgoFiles) > 0 && name != "projections/export" {
			t.Errorf("%s uses cgo (%v): only projections/export may", name, p.CgoFiles)
		}
		if name != "projections/export" && name != "cmd/strata" && deps["projections/export"] {
			t.Errorf("%s depends on projections/export (DuckDB): only cmd/strata may", name)
		}

		// No grab-bag packages.
		switch p.Name {
		case "util", "utils", "common", "helpers", "misc":
			t.Errorf("%s: no %s packages; name a package after its one purpose", name, p.Name)
		}

		// Every package says what it is and what it guarantees.
		if len(strings.Fields(p.Doc)) < 8 {
			t.Errorf("%s: package doc %q: want a doc comment that states what the package guarantees", name, p.Doc)
		}
	}
}

// TestStagesSayWhatTheyConsumeAndEmit: every stage package has a stage.go
// that names what it consumes and what it emits.
func TestStagesSayWhatTheyConsumeAndEmit(t *testing.T) {
	root := moduleRoot(t)
	for _, name := range stagePackages {
		b, err := os.ReadFile(filepath.Join(root, name, "stage.go"))
		if err != nil {
			t.Errorf("stage %s: %v (every stage has one stage.go)", name, err)
			continue
		}
		for _, word := range []string{"consumes", "emits"} {
			if !bytes.Contains(b, []byte(word)) {
				t.Errorf("stage %s: stage.go does not say what it %s", name, word)
			}
		}
	}
}

// subjectLiteral is a string literal that starts like a subject or an
// event type (two tokens at least): "strata.x.", "strata_ctl.*", …
var subjectLiteral = regexp.MustCompile(`"strata(_dlq|_ctl)?\.([*>]|[a-z0-9_-]+\.)`)

// TestSubjectsOnlyInEvents: subjects and event types are built by package
// events alone; no other production file spells one out (test helper
// packages, which forge bad events on purpose, excepted).
func TestSubjectsOnlyInEvents(t *testing.T) {
	for _, p := range goList(t) {
		if rel(p.ImportPath) == "events" || strings.HasSuffix(p.ImportPath, "test") {
			continue
		}
		for _, f := range p.GoFiles {
			b, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if m := subjectLiteral.Find(b); m != nil {
				t.Errorf("%s/%s spells a subject (%s…): build it with package events", rel(p.ImportPath), f, m)
			}
		}
	}
}
