//go:build linux

package scanner

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
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

// WriteText writes r for a terminal: one line per candidate, then totals.
func (r Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tSIZE\tFREES\tSTATE\tREASON")
	for _, c := range r.Candidates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Path, human(c.Stat.Size), human(c.Freed), c.State, c.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Truncated {
		fmt.Fprintf(w, "... %d more not listed\n", r.Files-int64(len(r.Candidates)))
	}
	for _, fs := range r.Summary.Filesystems {
		fmt.Fprintf(w, "%v: %.1f%% used of %s", fs.Roots, fs.UsedPct, human(fs.SizeBytes))
		if fs.AboveHigh {
			fmt.Fprintf(w, " (above high watermark: %s to free)", human(fs.Need))
		}
		fmt.Fprintln(w)
	}
	_, err := fmt.Fprintf(w, "would archive %d files, %s, freeing %s (scanned %d files in %d directories in %v; %d errors)\n",
		r.Files, human(r.Bytes), human(r.Freed), r.Summary.Files, r.Summary.Dirs, r.Summary.Duration.Round(time.Millisecond), r.Summary.Errors)
	return err
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
