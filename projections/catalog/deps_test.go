package catalog

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestDeps keeps the catalog free of DuckDB (cgo, confined to
// projections/export) and of every worker: a projection is built from
// events alone. It reads the log through the pipeline (replay.go): the
// catalog owns its projection.
func TestDeps(t *testing.T) {
	goTool := stratatest.NeedTool(t, "go")
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range []string{"duckdb", "strata/workers"} {
			if strings.Contains(dep, bad) {
				t.Errorf("catalog depends on %s", dep)
			}
		}
	}
}
