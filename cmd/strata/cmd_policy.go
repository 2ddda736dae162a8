package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/workers/scanner"
)

func cmdPolicy(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] != "preview" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(e.stdout, "Usage: strata policy preview [--json] [--limit N] [--data DIR]\n\nExample:\n  strata policy preview --limit 20")
			return nil
		}
		return fmt.Errorf("%w: policy: want \"policy preview\"", errUsage)
	}
	fs := newFlags("policy preview", "strata policy preview [--json] [--limit N] [--data DIR]", "strata policy preview --limit 20")
	data := dataDirFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	limit := fs.Int("limit", 100, "list at most this many files (totals count all)")
	if err := parse(fs, args[1:], e); err != nil {
		return err
	}
	var rep scanner.Report
	if err := request(ctx, *data, "preview", scanner.PreviewRequest{Limit: *limit}, &rep, 30*time.Minute); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, rep)
	}
	return writePreview(e.stdout, rep)
}

// writePreview writes a preview for a terminal: one line per candidate,
// then totals.
func writePreview(w io.Writer, r scanner.Report) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tSIZE\tFREES\tSTATE\tREASON")
	for _, c := range r.Candidates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Path, humanBytes(c.Stat.Size), humanBytes(c.Freed), c.State, c.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Truncated {
		fmt.Fprintf(w, "... %d more not listed\n", r.Files-int64(len(r.Candidates)))
	}
	for _, fs := range r.Summary.Filesystems {
		fmt.Fprintf(w, "%v: %.1f%% used of %s", fs.Roots, fs.UsedPct, humanBytes(fs.SizeBytes))
		if fs.AboveHigh {
			fmt.Fprintf(w, " (above high watermark: %s to free)", humanBytes(fs.Need))
		}
		fmt.Fprintln(w)
	}
	_, err := fmt.Fprintf(w, "would archive %d files, %s, freeing %s (scanned %d files in %d directories in %v; %d errors)\n",
		r.Files, humanBytes(r.Bytes), humanBytes(r.Freed), r.Summary.Files, r.Summary.Dirs, r.Summary.Duration.Round(time.Millisecond), r.Summary.Errors)
	return err
}
