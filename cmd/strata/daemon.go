package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/kernelguard"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/store"
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
	guard  *kernelguard.Guard // nil: no probe guard (guard.go)
	// removedTiers: tiers not configured that objects depend on, with how
	// many (checkRemovedTiers).
	removedTiers map[string]int

	unclaim func() // releases the hot trees (scanner.Claim)
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
	d.srv, err = pipeline.Open(ctx, cfg.pipelineConfig(), logger) // it names its own component
	if err != nil {
		return nil, err
	}
	if d.unclaim, err = scanner.Claim(cfg.hotRoots(), cfg.DataDir); err != nil {
		return nil, err
	}
	d.js = d.srv.JetStream()
	d.nc = d.srv.Conn()
	d.cat, err = catalog.Open(catalogDir(cfg.DataDir), catalog.Options{Logger: logger.With("component", "catalog"), Sync: true})
	if err != nil {
		return nil, err
	}
	d.guard = d.loadProbeGuard()
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
	if d.cat.LastSeq() < last {
		d.logger.Info("catalog catching up", "from", d.cat.LastSeq()+1, "to", last)
	}
	if err := d.cat.CatchUp(ctx, d.js, last, nil); err != nil {
		return err
	}
	d.checkRemovedTiers()
	if err := d.markStubs(ctx, d.stages); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.cat.Follow(gctx, d.js, d.logger.With("component", "catalog")) })
	d.runStages(gctx, d.stages, g)
	if d.guard != nil {
		g.Go(func() error { return d.serveProbeRecords(gctx, d.guard) })
	}
	stop, err := d.serveControl(context.Background())
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

// checkRemovedTiers says, loudly, when objects depend on a tier that is no
// longer configured (removed without strata tier drain): their files
// cannot be recalled until it is back.
func (d *daemon) checkRemovedTiers() {
	var names []string
	for _, t := range d.cfg.Tiers {
		names = append(names, t.Name)
	}
	deps, err := store.Dependents(d.cat, names, d.cfg.Release.From, d.cfg.Release.Copies)
	if err != nil {
		d.logger.Error("check for objects on removed tiers", "err", err)
		return
	}
	for t, n := range deps {
		d.logger.Error("a tier was removed from the configuration while objects depend on it: their files cannot be recalled; add it back, run strata tier drain, then remove it",
			"tier", t, "objects", n)
	}
	d.removedTiers = deps
}

// close shuts everything down in order; safe on a partly started daemon.
func (d *daemon) close() {
	d.stages.close(d.logger)
	if d.guard != nil {
		d.guard.Close() // it stays in the kernel, guarding stubs while no daemon runs
	}
	if d.cat != nil {
		if err := d.cat.Close(); err != nil {
			d.logger.Error("close catalog", "err", err)
		}
	}
	if d.unclaim != nil {
		d.unclaim()
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
