package main

import (
	"context"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/scanner"
)

func cmdLs(ctx context.Context, e *env, args []string) error {
	fs := newFlags("ls", "strata ls [--json] [--data DIR] PATH...", "strata ls /srv/projects/2019")
	data := dataDirFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	limit := fs.Int("limit", scanner.LsLimit, "list at most this many files")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: ls needs at least one PATH", errUsage)
	}
	req := scanner.LsRequest{Limit: *limit}
	for _, p := range fs.Args() {
		abs, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		req.Paths = append(req.Paths, abs)
	}
	var rep scanner.LsReply
	if err := request(ctx, *data, "ls", req, &rep, time.Minute); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, rep)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "STATE\tSIZE\tOBJECT\tCOPIES\tPATH")
	for _, f := range rep.Files {
		obj := "-"
		if f.ObjectID != "" {
			obj = f.ObjectID[:16]
		}
		copies := "-"
		if len(f.Copies) > 0 {
			copies = fmt.Sprint(len(f.Copies), " ", f.Copies)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", lsState(f.State), f.Size, obj, copies, f.Path)
	}
	if rep.Truncated {
		fmt.Fprintf(w, "… truncated at %d files (--limit)\n", len(rep.Files))
	}
	return w.Flush()
}

// lsState names a state the way users know it.
func lsState(s string) string {
	if s == catalog.StateArchived.String() {
		return "archived-clean"
	}
	return s
}
