package catalog

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestDeps keeps the catalog free of DuckDB (cgo, confined to
// projections/export), of NATS and of the pipeline: it takes envelopes.
func TestDeps(t *testing.T) {
	goTool := stratatest.NeedTool(t, "go")
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range []string{"duckdb", "nats-io", "strata/pipeline", "strata/workers"} {
			if strings.Contains(dep, bad) {
				t.Errorf("catalog depends on %s", dep)
			}
		}
	}
}
