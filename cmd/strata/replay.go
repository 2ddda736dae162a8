package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
)

// rebuildCatalog builds a fresh catalog in dir (which must not exist) from
// stream sequence 1 up to and including upTo. It is durable once closed
// (Close flushes).
func rebuildCatalog(ctx context.Context, js jetstream.JetStream, dir string, upTo uint64, logger *slog.Logger, prog *progress) (*catalog.Catalog, error) {
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("rebuild catalog: %s already exists", dir)
	}
	cat, err := catalog.Open(dir, catalog.Options{Logger: logger})
	if err != nil {
		return nil, err
	}
	if upTo == 0 {
		return cat, nil
	}
	err = pipeline.Follow(ctx, js, 1, func(batch []events.Envelope) error {
		for len(batch) > 0 && batch[len(batch)-1].Seq > upTo {
			batch = batch[:len(batch)-1]
		}
		if err := cat.Apply(batch); err != nil {
			return err
		}
		prog.Set(int64(cat.LastSeq()), int64(upTo), "")
		if cat.LastSeq() >= upTo {
			return pipeline.ErrStop
		}
		return nil
	})
	prog.Finish()
	if cat.LastSeq() < upTo {
		cat.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("rebuild catalog: stopped at seq %d of %d: %w", cat.LastSeq(), upTo, err)
	}
	return cat, nil
}

// verifyCatalog rebuilds the catalog beside live (paused by the caller) and
// returns the first difference, or "".
func verifyCatalog(ctx context.Context, js jetstream.JetStream, dataDir string, live *catalog.Catalog, logger *slog.Logger, prog *progress) (string, error) {
	tmp, err := os.MkdirTemp(dataDir, "catalog.verify-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	fresh, err := rebuildCatalog(ctx, js, filepath.Join(tmp, "db"), live.LastSeq(), logger, prog)
	if err != nil {
		return "", err
	}
	defer fresh.Close()
	return catalog.Diff(live, fresh)
}

// verifyReply is the result of `strata replay --verify`.
type verifyReply struct {
	Seq  uint64 `json:"seq"`
	Diff string `json:"diff,omitempty"`
}

func (d *daemon) ctlVerify(ctx context.Context, _ []byte) (any, error) {
	d.projMu.Lock()
	defer d.projMu.Unlock()
	diff, err := verifyCatalog(ctx, d.js, d.cfg.DataDir, d.cat, d.logger, nil)
	if err != nil {
		return nil, err
	}
	return verifyReply{Seq: d.cat.LastSeq(), Diff: diff}, nil
}
