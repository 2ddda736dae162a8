package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/workers/pruner"
)

type pruneCmd struct {
	Apply bool `help:"Remove the objects (default: dry run, nothing is removed)."`
	JSON  bool `name:"json" help:"Print JSON."`
}

func (*pruneCmd) Example() string {
	return "strata prune            # dry run: what retention lets go\nstrata prune --apply    # remove it from every tier"
}

func (c *pruneCmd) Run(ctx context.Context, e *env, g *globals) error {
	var rep pruner.Reply
	if err := request(ctx, g.dataDir(), "prune", pruner.Request{Apply: c.Apply}, &rep, 30*time.Minute); err != nil {
		return err
	}
	if c.JSON {
		if err := printJSON(e, rep); err != nil {
			return err
		}
	} else {
		verb := "would remove"
		if rep.Applied {
			verb = "removed"
		}
		for _, c := range rep.Objects {
			tiers := c.Tiers
			if rep.Applied {
				tiers = c.Deleted
			}
			fmt.Fprintf(e.stdout, "%s %s (%s) from %s: %s\n", verb, c.ObjectID, progress.Bytes(c.Size), strings.Join(tiers, ", "), c.Reason)
			for _, er := range c.Errors {
				fmt.Fprintf(e.stdout, "  error: %s\n", er)
			}
			if len(c.Kept) > 0 {
				fmt.Fprintf(e.stdout, "  kept on %s: tape cannot delete one object; its space comes back when the volume is relabelled\n", strings.Join(c.Kept, ", "))
			}
		}
		n := rep.Copies
		if rep.Applied {
			n = rep.Deleted
		}
		fmt.Fprintf(e.stdout, "%s %d copies of %d objects (%s packed); retention: keep_deleted %s, keep_versions %d\n",
			verb, n, len(rep.Objects), progress.Bytes(rep.PackedBytes), rep.KeepDeleted, rep.KeepVersions)
		if !rep.Applied && len(rep.Objects) > 0 {
			fmt.Fprintln(e.stdout, "dry run: nothing was removed; run strata prune --apply to remove them")
		}
	}
	if rep.Errors > 0 {
		return fmt.Errorf("prune: %d objects could not be removed everywhere", rep.Errors)
	}
	return nil
}
