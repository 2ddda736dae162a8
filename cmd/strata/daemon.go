package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
)

// daemon is a running `strata run`: the embedded NATS server, the catalog
// projection and the stages, wired together. Only cmd/strata builds one.
//
// Start order: server → catalog (caught up with the log) → stages →
// control responder ("ready"). Stop order is the reverse: control stops
// answering, stages drain and ack, the projector applies what is left, the
// catalog closes, the server shuts down.
type daemon struct {
	cfg     Config
	logger  *slog.Logger
	started time.Time

	srv *pipeline.Server
	js  jetstream.JetStream
	nc  *nats.Conn

	cat    *catalog.Catalog
	stages *stages

	// reconcile remembers the stubs the last scan missed (reconcile.go).
	reconcile struct {
		sync.Mutex
		missing map[string]bool
	}
	// projMu is held by the projector while it applies a batch, and by a
	// verify that needs the catalog to stand still.
	projMu sync.Mutex
}

// catalogDir is where the live catalog lives under the data directory.
func catalogDir(dataDir string) string { return filepath.Join(dataDir, "catalog") }

// startDaemon opens the server and the catalog. The caller runs d.run and
// then d.close.
func startDaemon(ctx context.Context, cfg Config, logger *slog.Logger) (_ *daemon, err error) {
	d := &daemon{cfg: cfg, logger: logger, started: time.Now()}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	d.srv, err = pipeline.Open(ctx, pipeline.Config{
		DataDir:    cfg.DataDir,
		Host:       cfg.Host,
		ListenHost: cfg.NATS.Listen,
		Port:       cfg.NATS.Port,
		Durables:   stageNamesFor(cfg),
	}, logger.With("component", "nats"))
	if err != nil {
		return nil, err
	}
	d.js = d.srv.JetStream()
	d.nc = d.srv.Conn()
	d.cat, err = catalog.Open(catalogDir(cfg.DataDir), catalog.Options{Logger: logger.With("component", "catalog"), Sync: true})
	if err != nil {
		return nil, err
	}
	if d.stages, err = d.buildStages(); err != nil {
		return nil, err
	}
	return d, nil
}

// run blocks until ctx ends or a component fails.
func (d *daemon) run(ctx context.Context) error {
	// Catch the catalog up with the log before anything reads it.
	last, err := pipeline.LastSeq(ctx, d.js)
	if err != nil {
		return err
	}
	if err := d.catchUp(ctx, last); err != nil {
		return err
	}
	if err := d.markStubs(ctx, d.stages); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.project(gctx) })
	d.runStages(gctx, d.stages, g)
	stop, err := d.serveControl()
	if err != nil {
		return err
	}
	defer stop()
	d.logger.Info("strata ready", "host", d.cfg.Host, "data", d.cfg.DataDir, "nats", d.srv.ClientURL(),
		"catalog_seq", d.cat.LastSeq())
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// catchUp applies the log to the catalog up to seq.
func (d *daemon) catchUp(ctx context.Context, seq uint64) error {
	cat := d.cat
	if cat.LastSeq() >= seq {
		return nil
	}
	d.logger.Info("catalog catching up", "from", cat.LastSeq()+1, "to", seq)
	err := applyLog(ctx, d.js, cat, seq, nil)
	if cat.LastSeq() >= seq {
		return nil
	}
	if err == nil {
		err = ctx.Err()
	}
	return fmt.Errorf("catalog catch-up stopped at %d of %d: %w", cat.LastSeq(), seq, err)
}

// project keeps the catalog following the log until ctx ends.
func (d *daemon) project(ctx context.Context) error {
	for {
		cat := d.cat
		err := pipeline.FollowRecords(ctx, d.js, cat.LastSeq()+1, pipeline.FollowOptions{}, func(recs []pipeline.Record) error {
			envs := make([]events.Envelope, len(recs))
			evs := make([]events.Event, len(recs))
			for i, r := range recs {
				envs[i], evs[i] = r.Envelope, r.Event
			}
			d.projMu.Lock()
			defer d.projMu.Unlock()
			return cat.ApplyDecoded(envs, evs)
		})
		if ctx.Err() != nil {
			return nil
		}
		d.logger.Error("catalog projection stopped; restarting", "err", err, "seq", cat.LastSeq())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// close shuts everything down in order; safe on a partly started daemon.
func (d *daemon) close() {
	d.stages.close(d.logger)
	if d.cat != nil {
		if err := d.cat.Close(); err != nil {
			d.logger.Error("close catalog", "err", err)
		}
	}
	if d.srv != nil {
		if err := d.srv.Close(); err != nil {
			d.logger.Error("close nats server", "err", err)
		}
	}
}

// newLogger returns the daemon's logger: text on stderr, or JSON.
func newLogger(jsonLogs bool, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if jsonLogs {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
