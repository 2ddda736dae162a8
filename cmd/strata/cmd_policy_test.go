package main

import (
	"strings"
	"testing"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/scanner"
)

// TestWritePreview: the terminal form of a preview lists each candidate
// with human sizes, says how many were left out, and totals every one.
func TestWritePreview(t *testing.T) {
	r := scanner.Report{
		Candidates: []scanner.Candidate{{Path: "/hot/a.bin", Stat: events.FileStat{Size: 3 << 20}, Freed: 3 << 20, Reason: events.ReasonPolicy}},
		Truncated:  true, Files: 3, Bytes: 5<<30 + 1, Freed: 4 << 30,
	}
	var b strings.Builder
	if err := writePreview(&b, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"/hot/a.bin", "3.0 MiB", "... 2 more not listed", "would archive 3 files, 5.0 GiB, freeing 4.0 GiB"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("preview text lacks %q:\n%s", want, b.String())
		}
	}
}
