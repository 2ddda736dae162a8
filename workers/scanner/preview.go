//go:build linux

package scanner

import (
	"cmp"
	"context"
	"slices"
	"time"
)

// Report is the result of Preview: what a scan would select now.
type Report struct {
	// Candidates, sorted by path; at most the limit given to Preview.
	Candidates []Candidate `json:"candidates"`
	// Truncated: more candidates than listed.
	Truncated bool `json:"truncated"`
	// Files, Bytes and Freed count every candidate, listed or not: how
	// many files, their size, and the blocks their release would free.
	Files   int64   `json:"files"`
	Bytes   int64   `json:"bytes"`
	Freed   int64   `json:"freed"`
	Summary Summary `json:"summary"`
}

// Preview is a dry run of Scan for `strata policy preview [--json]`: it
// selects like Scan and changes nothing. limit bounds the listed
// candidates (0: all); the totals always count every candidate. For the
// listing, the candidates kept are the first by path.
func Preview(ctx context.Context, p Policy, now time.Time, limit int) (Report, error) {
	var r Report
	byPath := func(a, b Candidate) int { return cmp.Compare(a.Path, b.Path) }
	sum, err := Scan(ctx, p, now, func(c Candidate) error {
		r.Files++
		r.Bytes += c.Stat.Size
		r.Freed += c.Freed
		r.Candidates = append(r.Candidates, c)
		if limit > 0 && len(r.Candidates) >= 2*limit {
			slices.SortFunc(r.Candidates, byPath)
			r.Candidates = r.Candidates[:limit]
			r.Truncated = true
		}
		return nil
	})
	r.Summary = sum
	if err != nil {
		return r, err
	}
	slices.SortFunc(r.Candidates, byPath)
	if limit > 0 && len(r.Candidates) > limit {
		r.Candidates = r.Candidates[:limit]
		r.Truncated = true
	}
	return r, nil
}
