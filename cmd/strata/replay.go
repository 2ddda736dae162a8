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
	err = applyLog(ctx, js, cat, upTo, prog)
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

// applyLog applies the log to cat from its next sequence up to and
// including upTo. Reading and decoding (in pipeline.FollowRecords) and
// applying (Pebble) run on different goroutines, so a replay uses both
// cores.
func applyLog(ctx context.Context, js jetstream.JetStream, cat *catalog.Catalog, upTo uint64, prog *progress) error {
	if cat.LastSeq() >= upTo {
		return nil
	}
	type batch struct {
		envs []events.Envelope
		evs  []events.Event
	}
	ch := make(chan batch, 4)
	done := make(chan error, 1)
	go func() {
		var err error
		for b := range ch {
			if err == nil {
				err = cat.ApplyDecoded(b.envs, b.evs)
				prog.Set(int64(cat.LastSeq()), int64(upTo), "")
			}
		}
		done <- err
	}()
	ferr := pipeline.FollowRecords(ctx, js, cat.LastSeq()+1, pipeline.FollowOptions{Batch: 2000}, func(recs []pipeline.Record) error {
		b := batch{envs: make([]events.Envelope, 0, len(recs)), evs: make([]events.Event, 0, len(recs))}
		for _, r := range recs {
			if r.Seq > upTo {
				break
			}
			b.envs = append(b.envs, r.Envelope)
			b.evs = append(b.evs, r.Event)
		}
		if len(b.envs) > 0 {
			select {
			case ch <- b:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if len(b.envs) < len(recs) || b.envs[len(b.envs)-1].Seq >= upTo {
			return pipeline.ErrStop
		}
		return nil
	})
	close(ch)
	if err := <-done; err != nil {
		return err
	}
	return ferr
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
