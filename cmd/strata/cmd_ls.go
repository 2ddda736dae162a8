package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/scanner"
)

type lsCmd struct {
	JSON  bool     `name:"json" help:"Print JSON."`
	Bytes bool     `help:"Print sizes in bytes (default: human sizes, 1.5 MiB)."`
	Limit int      `default:"${ls_limit}" placeholder:"N" help:"List at most this many files (default ${default})."`
	All   bool     `name:"all" help:"Also list other hosts' files under the paths (from the catalog, which every host of a cluster keeps whole)."`
	Paths []string `arg:"" name:"path" complete:"file" help:"Files or directories (recursively) to list."`
}

func (*lsCmd) Example() string { return "strata ls /srv/projects/2019" }

func (c *lsCmd) Run(ctx context.Context, e *env, g *globals) error {
	req := scanner.LsRequest{Limit: c.Limit, AllHosts: c.All}
	for _, p := range c.Paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		req.Paths = append(req.Paths, abs)
	}
	var rep scanner.LsReply
	if err := request(ctx, g.dataDir(), "ls", req, &rep, time.Minute); err != nil {
		return err
	}
	if c.JSON {
		return printJSON(e, rep)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "HOST\tSTATE\tSIZE\tRESIDENT\tOBJECT\tCOPIES\tPATH")
	for _, f := range rep.Files {
		obj := "-"
		if f.ObjectID != "" {
			obj = f.ObjectID[:16]
		}
		copies := "-"
		if len(f.Copies) > 0 {
			copies = fmt.Sprint(len(f.Copies), " ", f.Copies)
		}
		size := progress.Bytes(f.Size)
		if c.Bytes {
			size = strconv.FormatInt(f.Size, 10)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Host, lsState(f.State), size, lsResident(f), obj, copies, f.Path)
		for _, why := range f.Failures {
			fmt.Fprintf(w, "\t\t\t\t\t\t  no copy on %s\n", why)
		}
	}
	if rep.Truncated {
		fmt.Fprintf(w, "… truncated at %d files (--limit)\n", len(rep.Files))
	}
	return w.Flush()
}

// lsResident says how much of a stub is on the hot tier, as a percentage
// ("-" for other files: they are resident).
func lsResident(f scanner.LsEntry) string {
	if f.State != catalog.StateReleased.String() {
		return "-"
	}
	if f.Size == 0 {
		return "0%"
	}
	return strconv.FormatFloat(100*float64(f.Resident)/float64(f.Size), 'f', 1, 64) + "%"
}

// lsState names a state the way users know it.
func lsState(s string) string {
	if s == catalog.StateArchived.String() {
		return "archived-clean"
	}
	return s
}
