package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/workers/scanner"
)

type policyCmd struct {
	Preview policyPreviewCmd `cmd:"" help:"Dry run: what the scanner would archive now and how many bytes it would free."`
}

func (*policyCmd) Example() string { return "strata policy preview --limit 20" }

type policyPreviewCmd struct {
	JSON  bool `name:"json" help:"Print JSON."`
	Limit int  `default:"100" placeholder:"N" help:"List at most this many files (default ${default}; totals count all)."`
}

func (*policyPreviewCmd) Example() string { return "strata policy preview --limit 20" }

func (c *policyPreviewCmd) Run(ctx context.Context, e *env, g *globals) error {
	var rep scanner.Report
	if err := request(ctx, g.dataDir(), "preview", scanner.PreviewRequest{Limit: c.Limit}, &rep, 30*time.Minute); err != nil {
		return err
	}
	if c.JSON {
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Path, progress.Bytes(c.Stat.Size), progress.Bytes(c.Freed), c.State, c.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Truncated {
		fmt.Fprintf(w, "... %d more not listed\n", r.Files-int64(len(r.Candidates)))
	}
	for _, fs := range r.Summary.Filesystems {
		fmt.Fprintf(w, "%v: %.1f%% used of %s", fs.Roots, fs.UsedPct, progress.Bytes(fs.SizeBytes))
		if fs.AboveHigh {
			fmt.Fprintf(w, " (above high watermark: %s to free)", progress.Bytes(fs.Need))
		}
		fmt.Fprintln(w)
	}
	if _, err := fmt.Fprintf(w, "would archive %d files, %s, freeing %s (scanned %d files in %d directories in %v; %d errors)\n",
		r.Files, progress.Bytes(r.Bytes), progress.Bytes(r.Freed), r.Summary.Files, r.Summary.Dirs, r.Summary.Duration.Round(time.Millisecond), r.Summary.Errors); err != nil {
		return err
	}
	return writeNotChosen(w, r.Summary)
}

// writeNotChosen says why the files that are not candidates were not
// chosen, one count per reason (nothing when every file was chosen).
func writeNotChosen(w io.Writer, s scanner.Summary) error {
	reasons := []struct {
		n    int64
		what string
	}{
		{s.TooYoung, "too young (policy.min_age, policy.age_by)"},
		{s.TooSmall, "too small (policy.min_size)"},
		{s.Excluded, "excluded (policy.include, policy.exclude)"},
		{s.Pinned, "pinned (strata pin, policy.pinned)"},
		{s.Released, "already released (stubs)"},
		{s.NoBlocks, "hold no blocks (empty or sparse: releasing frees nothing)"},
		{s.OtherFS, "on another filesystem (cross_mounts = false)"},
	}
	var total int64
	for _, r := range reasons {
		total += r.n
	}
	if total == 0 {
		return nil
	}
	if _, err := fmt.Fprintln(w, "not chosen:"); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	for _, r := range reasons {
		if r.n > 0 {
			fmt.Fprintf(tw, "  %d\t %s\n", r.n, r.what)
		}
	}
	return tw.Flush()
}
