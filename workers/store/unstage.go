package store

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/tier"
)

// UnstageName is the durable consumer of the unstage stage.
const UnstageName = "unstage"

// unstageCatalog is what the unstage stage reads of the catalog.
type unstageCatalog interface {
	WaitSeq(ctx context.Context, seq uint64) error
	Copies(objectID string) ([]catalog.Copy, error)
	FilesByObject(objectID string) ([]catalog.File, error)
	Versions(fileID string) ([]catalog.Version, error)
}

// UnstageConfig wires the unstage stage.
type UnstageConfig struct {
	Catalog    unstageCatalog
	Host       string
	StagingDir string
	// Filters holds every tier by name, with its filter (nil: the tier
	// takes every file); Roots are the hot trees the filters' patterns
	// are relative to.
	Filters map[string]*tier.Filter
	Roots   []string
	Logger  *slog.Logger
}

// Unstage returns the unstage stage (see the package doc).
func Unstage(cfg UnstageConfig) pipeline.Stage {
	return pipeline.Stage{
		Name: UnstageName,
		Filter: []string{
			events.Subject(events.AnyHost, events.KindObjectStored),
			events.Subject(cfg.Host, events.KindObjectPacked),
		},
		Concurrency: 1,
		Handle: pipeline.HandleEither[*events.ObjectStored, *events.ObjectPacked](UnstageName, func(ctx context.Context, env events.Envelope, ev events.Event) error {
			oid := ev.Entity() // the object both event types name
			if err := cfg.Catalog.WaitSeq(ctx, env.Seq); err != nil {
				return err
			}
			done, err := cfg.storedWherever(oid)
			if err != nil || !done {
				return err
			}
			for _, ext := range []string{".zst", ".json"} {
				p := filepath.Join(cfg.StagingDir, oid+ext)
				if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
					cfg.Logger.Warn("remove staged object", "path", p, "err", err)
				}
			}
			return nil
		}),
	}
}

// storedWherever reports whether every tier that wants object oid holds a
// good copy of it.
func (cfg *UnstageConfig) storedWherever(oid string) (bool, error) {
	cat := cfg.Catalog
	cps, err := cat.Copies(oid)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return false, err
	}
	good := map[string]bool{}
	for _, c := range cps {
		good[c.Tier] = good[c.Tier] || c.State == catalog.CopyGood
	}
	files, err := cat.FilesByObject(oid)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return false, err
	}
	// Every path and size the object was packed under: a tier's store
	// stage decided on one of them.
	type use struct {
		rel  string
		size int64
	}
	var uses []use
	for _, f := range files {
		uses = append(uses, use{tier.RelPath(cfg.Roots, f.Path), f.Stat.Size})
		vs, err := cat.Versions(f.ID)
		if err != nil && !errors.Is(err, catalog.ErrNotFound) {
			return false, err
		}
		for _, v := range vs {
			if v.ObjectID == oid {
				uses = append(uses, use{tier.RelPath(cfg.Roots, v.Path), v.Stat.Size})
			}
		}
	}
	if len(uses) == 0 {
		return false, nil
	}
	for name, f := range cfg.Filters {
		wanted := false
		for _, u := range uses {
			wanted = wanted || f.Wants(u.rel, u.size)
		}
		if wanted && !good[name] {
			return false, nil
		}
	}
	return true, nil
}
