package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/pruner"
)

// pruneRequest is the control verb "prune".
type pruneRequest struct {
	Apply bool `json:"apply"`
}

// pruneReply lists what retention lets go and, with Apply, what was removed.
type pruneReply struct {
	Applied      bool               `json:"applied"`
	KeepDeleted  string             `json:"keep_deleted"`
	KeepVersions int                `json:"keep_versions"`
	Objects      []pruner.Candidate `json:"objects"`
	Copies       int                `json:"copies"`       // copies listed
	PackedBytes  int64              `json:"packed_bytes"` // their packed bytes
	Deleted      int                `json:"deleted"`      // copies removed (Apply)
	Errors       int                `json:"errors"`       // objects with a failure (Apply)
	CatalogSeq   uint64             `json:"catalog_seq"`  // the plan's catalog sequence
}

func (d *daemon) ctlPrune(ctx context.Context, s *stages, raw []byte) (any, error) {
	var req pruneRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("prune: bad request: %w", err)
	}
	// Plan on a catalog caught up with the log.
	last, err := pipeline.LastSeq(ctx, d.js)
	if err != nil {
		return nil, err
	}
	if err := d.cat.WaitSeq(ctx, last); err != nil {
		return nil, err
	}
	pol := pruner.Policy{KeepDeleted: time.Duration(d.cfg.Retention.KeepDeleted), KeepVersions: d.cfg.Retention.KeepVersions, Now: time.Now()}
	plan, err := pruner.Plan(d.cat, pol)
	if err != nil {
		return nil, err
	}
	rep := pruneReply{Applied: req.Apply, KeepDeleted: time.Duration(d.cfg.Retention.KeepDeleted).String(),
		KeepVersions: d.cfg.Retention.KeepVersions, CatalogSeq: d.cat.LastSeq(), Objects: []pruner.Candidate{}}
	if req.Apply && len(plan) > 0 {
		em := pipeline.NewEmitter(d.js, d.cfg.Host, "prune")
		plan, err = pruner.Apply(ctx, pruner.ApplyConfig{
			Catalog: d.cat, Policy: pol, Targets: s.targets, Guard: s.guard,
			Sync: func(ctx context.Context, oid string) error {
				// A staged object is being archived again (same content):
				// never prune under an archive in flight.
				if _, err := os.Stat(filepath.Join(s.stagingDir, oid+".zst")); err == nil {
					return errors.New("staged for an archive in progress; kept")
				}
				last, err := pipeline.LastSeq(ctx, d.js)
				if err != nil {
					return err
				}
				return d.cat.WaitSeq(ctx, last)
			},
			Emit: func(ctx context.Context, ev events.Event, parts ...string) error {
				_, err := em.Emit(ctx, ev, parts...)
				return err
			},
			Logger: d.logger.With("component", "prune"),
		}, plan)
		if err != nil {
			return nil, err
		}
	}
	for _, c := range plan {
		rep.Objects = append(rep.Objects, c)
		rep.Copies += len(c.Tiers)
		rep.PackedBytes += c.PackedSize * int64(len(c.Tiers))
		rep.Deleted += len(c.Deleted)
		if len(c.Errors) > 0 {
			rep.Errors++
		}
	}
	return rep, nil
}

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
	var rep pruneReply
	if err := request(ctx, *data, "prune", pruneRequest{Apply: *apply}, &rep, 30*time.Minute); err != nil {
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
