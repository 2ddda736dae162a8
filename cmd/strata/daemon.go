package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/cmd/internal/metrics"
	"github.com/strata-hsm/strata/cmd/internal/sdnotify"
	"github.com/strata-hsm/strata/events"
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

	// spaces are the places every stage writes to: the data directory
	// (the server's Space) and staging when it is a filesystem of its own
	// (watched until stopSpaces).
	spaces     []*pipeline.Space
	stopSpaces func()

	unclaim func() // releases the hot trees (scanner.Claim)

	// metrics is served on metricsAddr (empty: not served) until
	// stopMetrics (metrics.go).
	metrics     *metrics.Metrics
	metricsAddr string
	stopMetrics func()

	// notify tells systemd (Type=notify) how starting goes, READY=1 once
	// every stub is marked, STOPPING=1, and WATCHDOG=1 (nil: not under
	// systemd; sdnotify.go).
	notify   *sdnotify.Notifier
	stopOnce sync.Once // STOPPING=1 is sent once
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
	copts := catalog.Options{Logger: logger.With("component", "catalog"), Sync: true, Space: d.srv.Space(), Host: d.srv.Host()}
	if d.cat, err = catalog.OpenOrRebuild(ctx, d.js, catalogDir(cfg.DataDir), copts); err != nil {
		return nil, err
	}
	d.guard = d.loadProbeGuard()
	d.metrics = d.newMetrics()
	if d.stages, err = d.buildStages(); err != nil {
		return nil, err
	}
	d.watchSpaces()
	return d, nil
}

// watchSpaces sets d.spaces, the places every stage needs: the data
// directory (the server watches it), and staging if it is mounted apart;
// and watches them and the stages' places (tiers, hot trees) until
// stopSpaces.
func (d *daemon) watchSpaces() {
	d.spaces = []*pipeline.Space{d.srv.Space()}
	watch := d.stages.places
	var data, staging unix.Stat_t
	if unix.Stat(d.cfg.DataDir, &data) == nil && unix.Stat(d.stages.stagingDir, &staging) == nil && data.Dev != staging.Dev {
		sp := pipeline.NewSpace(pipeline.SpaceConfig{Key: "space:staging", Place: "staging", Path: d.stages.stagingDir, Conditions: d.srv.Conditions()})
		d.spaces = append(d.spaces, sp)
		watch = append(watch, sp)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, sp := range watch {
		wg.Go(func() { sp.Run(ctx) })
	}
	d.stopSpaces = func() { cancel(); wg.Wait() }
}

// tierSpace is the space of a directory tier's root, or nil for other
// kinds (a bucket or a tape has no filesystem here). A tier keeps no
// reserve: it is out of space only once a copy failed for lack of room,
// and back once a probe write fits.
func (d *daemon) tierSpace(t TierConfig) *pipeline.Space {
	if t.Kind != events.TierDirectory {
		return nil
	}
	return pipeline.NewSpace(pipeline.SpaceConfig{
		Key: "space:tier:" + t.Name, Place: "tier " + t.Name, Path: t.Path, Conditions: d.srv.Conditions(), Reserve: 1,
		Effect: "copies to this tier wait (other tiers go on); files are released once release.copies is met; free space on it or add a tier",
	})
}

// hotSpaces are the spaces of the hot trees: out of space once a recall
// could not write for lack of room (the program got ENOSPC), until twice
// the reserve is free. A hot tree that is merely nearly full is the
// watermarks' business, not a condition. Nothing waits on them; status and
// doctor show them.
func (d *daemon) hotSpaces() []*pipeline.Space {
	var out []*pipeline.Space
	for _, root := range d.cfg.hotRoots() {
		out = append(out, pipeline.NewSpace(pipeline.SpaceConfig{
			Key: "space:hot:" + root, Place: "hot tree", Path: root, Conditions: d.srv.Conditions(), Foreign: true,
			Effect: "recalls into it fail with ENOSPC (nothing is lost: the stubs stay stubs); free space or archive and release files there",
		}))
	}
	return out
}

// fullSpace returns the error of the first of d.spaces that is out of
// space, or nil.
func (d *daemon) fullSpace() error {
	for _, sp := range d.spaces {
		if err := sp.Err(); err != nil {
			return err
		}
	}
	return nil
}

// refuseWhenFull wraps the handlers of verbs that start new work: while
// the data directory (or staging) is out of space they answer at once
// with why and what to do, instead of starting work that cannot be
// recorded.
func (d *daemon) refuseWhenFull(h map[string]pipeline.ControlHandler, verbs ...string) {
	for _, verb := range verbs {
		next := h[verb]
		if next == nil {
			continue
		}
		h[verb] = func(ctx context.Context, req []byte) (any, error) {
			if err := d.fullSpace(); err != nil {
				return nil, fmt.Errorf("%s: refused: %w", verb, err)
			}
			return next(ctx, req)
		}
	}
}

// run blocks until ctx ends or a component fails.
func (d *daemon) run(ctx context.Context) error {
	// Catch the catalog up with the log before anything reads it.
	last, err := pipeline.LastSeq(ctx, d.js)
	if err != nil {
		return err
	}
	d.serveMetrics(ctx, last+1) // /healthz from now on; /readyz once ready
	stopWatchdog := d.watchdog()
	defer stopWatchdog()
	if d.cat.LastSeq() < last {
		d.logger.Info("catalog catching up", "from", d.cat.LastSeq()+1, "to", last)
		d.status(fmt.Sprintf("catalog catching up: event %d to %d", d.cat.LastSeq()+1, last))
	}
	if err := d.cat.CatchUp(ctx, d.js, last, nil); err != nil {
		return err
	}
	d.checkRemovedTiers()
	d.status("marking stubs")
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
	d.metrics.SetReady()
	d.notifyReady()
	go d.warnUnreachableTiers(ctx)
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		d.metrics.SetNotReady("stopping")
		d.notifyStopping()
		// Stages drain for up to their DrainTimeout; a component stuck
		// in a write that cannot finish (a disk that cannot take it)
		// must not keep the daemon from stopping.
		select {
		case err = <-done:
		case <-time.After(stopGrace):
			d.logger.Error("stop: components still running; stopping without them (the event log is intact; the catalog catches up at the next start)", "waited", stopGrace)
			return nil
		}
	}
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

// Stop bounds: how long run waits for the stages and the projection after
// its context ends (more than the stages' drain timeout), and how long
// each step of close may take.
const (
	stopGrace    = pipeline.DefaultDrainTimeout + 15*time.Second
	closeStepMax = 20 * time.Second
)

// close shuts everything down in order; safe on a partly started daemon.
// Each step is bounded (closeStepMax): a step that does not finish (a
// store that cannot write) is left behind with an error line, and the
// steps after it are skipped (they would wait for it). The process exits
// after close, which drops the locks; the catalog and the event log are
// crash-safe.
func (d *daemon) close() {
	steps := []struct {
		name string
		fn   func()
	}{
		{"metrics", func() {
			if d.metrics != nil {
				d.metrics.SetNotReady("stopping")
			}
			if d.stopMetrics != nil {
				d.stopMetrics() // before the interceptor closes: a scrape reads its group
			}
		}},
		{"stages", func() { d.stages.close(d.logger) }},
		{"probe guard", func() {
			if d.guard != nil {
				d.guard.Close() // it stays in the kernel, guarding stubs while no daemon runs
			}
		}},
		{"catalog", func() {
			if d.cat != nil {
				if err := d.cat.Close(); err != nil {
					d.logger.Error("close catalog", "err", err)
				}
			}
		}},
		{"hot trees", func() {
			if d.unclaim != nil {
				d.unclaim()
			}
		}},
		{"space watch", func() {
			if d.stopSpaces != nil {
				d.stopSpaces()
			}
		}},
		{"nats server", func() {
			if d.srv != nil {
				if err := d.srv.Close(); err != nil {
					d.logger.Error("close nats server", "err", err)
				}
			}
		}},
	}
	for _, st := range steps {
		done := make(chan struct{})
		go func() { defer close(done); st.fn() }()
		select {
		case <-done:
		case <-time.After(closeStepMax):
			d.logger.Error("stop: step did not finish; stopping without the rest", "step", st.name, "waited", closeStepMax)
			return
		}
	}
}

// newLogger returns the daemon's logger: text on stderr, or JSON. Under
// journald (stderr is the stream $JOURNAL_STREAM names) it writes no time
// of its own, since the journal stamps every line, and starts each line
// with its syslog priority (<3> error, <4> warning, <6> info, <7> debug),
// which journald reads as the entry's priority (journalctl -p).
func newLogger(jsonLogs bool, level slog.Level) *slog.Logger {
	return newLoggerTo(os.Stderr, jsonLogs, level)
}

func newLoggerTo(f *os.File, jsonLogs bool, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var w io.Writer = f
	if journalStream(f) {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
		w = priorityWriter{f}
	}
	if jsonLogs {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// journalStream reports whether f is the journald stream systemd connected
// this process to: $JOURNAL_STREAM is "DEV:INODE" of it (inherited by
// children whose stderr is elsewhere, such as a holder logging to a file,
// hence the comparison).
func journalStream(f *os.File) bool {
	dev, ino, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return false
	}
	return dev == strconv.FormatUint(st.Dev, 10) && ino == strconv.FormatUint(st.Ino, 10)
}

// priorityWriter prefixes each record (one Write per record, as slog's
// handlers do) with the syslog priority of its level.
type priorityWriter struct{ w io.Writer }

func (p priorityWriter) Write(b []byte) (int, error) {
	// The level is the first attribute once the time is gone:
	// "level=WARN msg=…" or {"level":"WARN",…}; custom levels read
	// "WARN+2" and the like.
	lvl, ok := bytes.CutPrefix(b, []byte("level="))
	if !ok {
		lvl, _ = bytes.CutPrefix(b, []byte(`{"level":"`))
	}
	prio := "<6>"
	switch {
	case bytes.HasPrefix(lvl, []byte("ERROR")):
		prio = "<3>"
	case bytes.HasPrefix(lvl, []byte("WARN")):
		prio = "<4>"
	case bytes.HasPrefix(lvl, []byte("DEBUG")):
		prio = "<7>"
	}
	if _, err := p.w.Write(append([]byte(prio), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}
