package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/strata-hsm/strata/workers/pruner"
)

func cmdPrune(ctx context.Context, e *env, args []string) error {
	fs := newFlags("prune", "strata prune [--apply] [--json] [--data DIR]", "strata prune            # dry run: what retention lets go\n  strata prune --apply    # remove it from every tier")
	data := dataDirFlag(fs)
	apply := fs.Bool("apply", false, "remove the objects (default: dry run, nothing is removed)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: prune: unexpected argument %q", errUsage, fs.Arg(0))
	}
	var rep pruner.Reply
	if err := request(ctx, *data, "prune", pruner.Request{Apply: *apply}, &rep, 30*time.Minute); err != nil {
		return err
	}
	if *asJSON {
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
			fmt.Fprintf(e.stdout, "%s %s (%s) from %s: %s\n", verb, c.ObjectID, humanBytes(c.Size), strings.Join(tiers, ", "), c.Reason)
			for _, er := range c.Errors {
				fmt.Fprintf(e.stdout, "  error: %s\n", er)
			}
		}
		n := rep.Copies
		if rep.Applied {
			n = rep.Deleted
		}
		fmt.Fprintf(e.stdout, "%s %d copies of %d objects (%s packed); retention: keep_deleted %s, keep_versions %d\n",
			verb, n, len(rep.Objects), humanBytes(rep.PackedBytes), rep.KeepDeleted, rep.KeepVersions)
		if !rep.Applied && len(rep.Objects) > 0 {
			fmt.Fprintln(e.stdout, "dry run: nothing was removed; run strata prune --apply to remove them")
		}
	}
	if rep.Errors > 0 {
		return fmt.Errorf("prune: %d objects could not be removed everywhere", rep.Errors)
	}
	return nil
}
