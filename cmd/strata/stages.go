package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/schemas"
	"github.com/strata-hsm/strata/workers/compressor"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/modwatch"
	"github.com/strata-hsm/strata/workers/pruner"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/releaser"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/scrubber"
	"github.com/strata-hsm/strata/workers/store"
	"github.com/strata-hsm/strata/workers/tapewriter"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/rclone"
	"github.com/strata-hsm/strata/workers/tier/s3"
)

// stages holds the daemon's workers, built explicitly from the config (no
// registration through init).
type stages struct {
	failpoints  failpoint.Set
	stagingDir  string
	targets     map[string]tier.Target // guarded by guard (Put vs prune)
	costs       map[string]int
	filters     map[string]*tier.Filter       // nil: the tier takes every file
	outcomes    map[string]*pipeline.Outcomes // by tier: its store stage
	guard       *pruner.Guard
	draining    *tier.Draining              // strata tier drain: copies that no longer count
	tapeTiers   map[string]*tapewriter.Tier // tape tiers bring their own store stage
	reader      *recall.Reader
	interceptor *interceptor.Interceptor
	modwatch    *modwatch.Watcher // nil without hot trees
	scanner     *scanner.Loop
	pipeline    []pipeline.Stage
	validator   *schemas.Validator
	// places are the spaces of directory tiers and hot trees: a copy to a
	// full tier waits (other tiers go on), a recall into a full hot tree
	// reports it; the daemon runs them (watchSpaces).
	places []*pipeline.Space
}

// stageNamesFor lists the durable consumers the config creates.
func stageNamesFor(cfg Config) []string {
	names := []string{compressor.StageName, releaser.StageName, interceptor.PrefetchStageName}
	for _, t := range cfg.Tiers {
		names = append(names, tier.StageName(t.Name))
	}
	if anyFiltered(cfg) {
		names = append(names, store.UnstageName)
	}
	// Every stage is host-local today (each reads this host's hot tree or
	// staging): in a cluster its durable is per host.
	for i, n := range names {
		names[i] = pipeline.Durable(n, cfg.Host, cfg.Cluster.Enabled(), false)
	}
	return names
}

// maxSocketPath is the longest path of a unix socket (sun_path less its NUL).
const maxSocketPath = 107

// buildStages opens the tiers, the recall reader and the interceptor, and
// describes every stage. Nothing runs until runStages.
func (d *daemon) buildStages() (*stages, error) {
	cfg := d.cfg
	s := &stages{
		failpoints: failpoint.New(),
		stagingDir: filepath.Join(cfg.DataDir, "staging"),
		targets:    map[string]tier.Target{},
		draining:   &tier.Draining{},
		costs:      map[string]int{},
		filters:    map[string]*tier.Filter{},
		outcomes:   map[string]*pipeline.Outcomes{},
		guard:      pruner.NewGuard(),
		tapeTiers:  map[string]*tapewriter.Tier{},
	}
	if unknown := s.failpoints.Unknown(); len(unknown) > 0 {
		d.logger.Warn("STRATA_FAILPOINTS names failpoints no stage defines: they never fire", "unknown", unknown)
	}
	var err error
	if s.validator, err = schemas.NewValidator(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.stagingDir, 0o700); err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	if err := compressor.RemoveTemps(s.stagingDir); err != nil {
		return nil, err
	}
	for _, t := range cfg.Tiers {
		var tg tier.Target
		var err error
		if t.Kind == events.TierTape {
			tt, terr := d.openTapeTier(t)
			if terr != nil {
				return nil, fmt.Errorf("tier %s: %w", t.Name, terr)
			}
			s.tapeTiers[t.Name] = tt
			tg = tt.Target()
		} else if tg, err = d.openTier(t); err != nil {
			return nil, err
		}
		s.targets[t.Name] = s.guard.Wrap(tg)
		s.costs[t.Name] = t.Cost
		if s.filters[t.Name], err = tier.NewFilter(t.Include, t.Exclude, int64(t.MinSize), int64(t.MaxSize)); err != nil {
			return nil, fmt.Errorf("tier %s: %w", t.Name, err)
		}
		s.outcomes[t.Name] = &pipeline.Outcomes{}
	}
	s.reader, err = recall.New(recall.Config{
		Targets: s.targets, Catalog: d.cat, Costs: s.costs,
		Emitter: pipeline.NewEmitter(d.js, cfg.Host, "recall"),
		Logger:  d.logger.With("component", "recall"),
	})
	if err != nil {
		return nil, err
	}
	icfg := cfg.interceptorConfig()
	icfg.Failpoints = s.failpoints
	hotSpaces := d.hotSpaces()
	s.places = append(s.places, hotSpaces...)
	icfg.OnFail = func(f interceptor.Failure) {
		for _, sp := range hotSpaces {
			if sp.Contains(f.Path) {
				sp.Report(f.Err)
			}
		}
	}
	if cfg.Interceptor.HolderOn() {
		dir := filepath.Join(cfg.DataDir, "interceptor")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("interceptor directory: %w", err)
		}
		icfg.JournalDir, icfg.HolderSocket = dir, holderSocket(cfg.DataDir)
		if len(icfg.HolderSocket) > maxSocketPath {
			return nil, fmt.Errorf("interceptor: holder socket %s is longer than %d bytes (a unix socket limit): use a shorter data directory, or interceptor.holder = false", icfg.HolderSocket, maxSocketPath)
		}
	}
	if !cfg.Interceptor.HolderOn() {
		if st, err := interceptor.QueryHolder(holderSocket(cfg.DataDir)); err == nil && st.State != "empty" {
			return nil, fmt.Errorf("interceptor.holder = false, but the holder of an earlier run (pid %d) guards this data directory's stubs (%s): stop it first with `strata holder stop --unguard`, or run with interceptor.holder = true", st.PID, describeHolder(st))
		}
		d.logger.Warn("interceptor.holder = false: while this daemon is stopped or dead, stubs read as zeros, with no error")
	}
	icfg.Emitter = pipeline.NewEmitter(d.js, cfg.Host, "interceptor")
	if d.metrics != nil {
		icfg.OnAnswer, icfg.OnFirstByte = d.metrics.Answered, d.metrics.FirstByte
	}
	if d.guard != nil {
		icfg.Guard = d.guard
	}
	if s.interceptor, err = interceptor.Open(icfg, s.reader, d.logger.With("stage", "interceptor")); err != nil {
		return nil, fmt.Errorf("interceptor: %w", err)
	}

	host := cfg.Host
	comp, err := compressor.New(cfg.compressorConfig(s.stagingDir))
	if err != nil {
		return nil, err
	}
	s.pipeline = append(s.pipeline, compressor.Stage(compressor.StageConfig{
		Compressor: comp, Emitter: pipeline.NewEmitter(d.js, host, compressor.StageName),
		Roots: cfg.hotRoots(), Failpoints: s.failpoints, Logger: d.logger.With("stage", compressor.StageName),
	}))
	for _, t := range cfg.Tiers {
		name := tier.StageName(t.Name)
		filter := s.filters[t.Name]
		var st pipeline.Stage
		if tt := s.tapeTiers[t.Name]; tt != nil {
			// The tape writer's own stage (bundles, ring, filemarks) and
			// retry policy; the tier's filters apply before it.
			st = tt.Stage()
			if st.Name != name {
				return nil, fmt.Errorf("tier %s: tape stage is named %q, want %q", t.Name, st.Name, name)
			}
			if filter != nil {
				h, roots := st.Handle, d.cfg.hotRoots()
				st.Handle = func(ctx context.Context, env events.Envelope, ev events.Event) error {
					if p, ok := ev.(*events.ObjectPacked); ok && !filter.Wants(tier.RelPath(roots, p.Path), p.Size) {
						return nil
					}
					return h(ctx, env, ev)
				}
			}
		} else {
			st = store.Stage(store.StageConfig{
				Target: s.targets[t.Name], Emitter: pipeline.NewEmitter(d.js, host, name),
				Failpoints: s.failpoints, Logger: d.logger.With("stage", name), Filter: filter, Roots: d.cfg.hotRoots(),
				Repairer: s.reader,
			})
			if sp := d.tierSpace(t); sp != nil {
				st.Spaces = append(st.Spaces, sp)
				s.places = append(s.places, sp)
			}
		}
		st.Handle = s.outcomes[t.Name].Track(st.Handle)
		s.pipeline = append(s.pipeline, st)
	}
	// The releaser removes a staged object once every tier has a copy; with
	// tiers that take only some files, the unstage stage does it instead
	// (once every tier that wants the object has its copy).
	allTiers := cfg.tierNames()
	if anyFiltered(cfg) {
		allTiers = nil
		s.pipeline = append(s.pipeline, store.Unstage(store.UnstageConfig{
			Catalog: d.cat, Host: host, StagingDir: s.stagingDir, Filters: s.filters, Roots: d.cfg.hotRoots(),
			Logger: d.logger.With("stage", store.UnstageName),
		}))
	}
	s.pipeline = append(s.pipeline, interceptor.PrefetchStage(host, d.logger.With("stage", interceptor.PrefetchStageName)))
	s.pipeline = append(s.pipeline, releaser.Stage(releaser.StageConfig{
		Catalog: d.cat, Emitter: pipeline.NewEmitter(d.js, host, releaser.StageName),
		Roots: d.cfg.hotRoots(), Copies: cfg.Release.Copies, CountingTiers: cfg.Release.From, Draining: s.draining, AllTiers: allTiers,
		StagingDir: s.stagingDir, Mark: s.interceptor.Hold, Unhold: s.interceptor.Unhold, Guard: s.interceptor.GuardStub, Failpoints: s.failpoints,
		ResidentHead: int64(cfg.Release.ResidentHead), ResidentTail: int64(cfg.Release.ResidentTail),
		Logger: d.logger.With("stage", releaser.StageName),
	}))
	if roots := d.cfg.hotRoots(); len(roots) > 0 {
		s.modwatch, err = modwatch.Open(modwatch.Config{Host: host, JS: d.js, Emitter: pipeline.NewEmitter(d.js, host, "modwatch"),
			Catalog: d.cat, Roots: roots, Logger: d.logger.With("stage", "modwatch")})
		if err != nil {
			d.logger.Error("no modification watcher: writes into archived files are found at the next scan", "err", err)
		}
		em, logger := pipeline.NewEmitter(d.js, host, "scanner"), d.logger.With("stage", "scanner")
		s.scanner = scanner.NewLoop(scanner.LoopConfig{
			Policy: d.cfg.scanPolicy(), Interval: time.Duration(cfg.Policy.ScanInterval), Emitter: em, Catalog: d.cat,
			Reconciler: &scanner.Reconciler{Policy: d.cfg.scanPolicy(), Catalog: d.cat, Marker: s.interceptor, Emitter: em, Logger: logger},
			Logger:     logger, Failpoints: s.failpoints,
		})
	}
	return s, nil
}

// runStages runs every stage until ctx ends; the first failure stops all.
func (d *daemon) runStages(ctx context.Context, s *stages, g interface{ Go(func() error) }) {
	runner := &pipeline.Runner{JS: d.js, Host: d.cfg.Host, Logger: d.logger, Validate: s.validator.Validate, Owner: d.srv.OwnerToken(), Spaces: d.spaces,
		Clustered: d.srv.Clustered()}
	// Durables nobody may keep (a reader's, not in nats.reader_durables)
	// are removed before the stages start and every 10 minutes.
	g.Go(func() error {
		for {
			if _, err := pipeline.SweepConsumers(ctx, d.js, d.srv.OwnerToken(), d.cfg.NATS.ReaderDurables, d.logger); err != nil && ctx.Err() == nil {
				d.logger.Error("sweep stray consumers", "err", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Minute):
			}
		}
	})
	for _, st := range s.pipeline {
		g.Go(func() error { return runner.Run(ctx, st) })
	}
	if s.scanner != nil {
		g.Go(func() error { return s.scanner.Run(ctx) })
	}
	if s.modwatch != nil {
		g.Go(func() error { return s.modwatch.Run(ctx) })
	}
	scrubs := &scrubber.Service{Schedule: d.cfg.scrubSchedule(), Targets: s.targets, Catalog: d.cat, Repairer: s.reader,
		Emitter: pipeline.NewEmitter(d.js, d.cfg.Host, "scrub"), Logger: d.logger.With("component", "scrub"), Failpoints: s.failpoints}
	prunes := &pruner.Service{Catalog: d.cat, JS: d.js, Emitter: pipeline.NewEmitter(d.js, d.cfg.Host, "prune"),
		Targets: s.targets, Guard: s.guard, StagingDir: s.stagingDir,
		KeepDeleted: time.Duration(d.cfg.Retention.KeepDeleted), KeepVersions: d.cfg.Retention.KeepVersions,
		Logger: d.logger.With("component", "prune"), Failpoints: s.failpoints}
	drains := &store.Drainer{Catalog: d.cat, Copier: s.reader, Targets: s.targets, Filters: s.filters, Roots: d.cfg.hotRoots(),
		Counting: d.cfg.Release.From, Copies: d.cfg.Release.Copies, Draining: s.draining,
		Emitter: pipeline.NewEmitter(d.js, d.cfg.Host, "drain"), Logger: d.logger.With("component", "drain")}
	repunch := &releaser.Repuncher{Roots: d.cfg.hotRoots(), ResidentHead: int64(d.cfg.Release.ResidentHead), ResidentTail: int64(d.cfg.Release.ResidentTail),
		Manifest: s.reader.Manifest, Hold: s.interceptor.Hold, Unhold: s.interceptor.Unhold, Logger: d.logger.With("component", "repunch")}
	verbs := scrubs.Handlers(ctx)
	maps.Copy(verbs, repunch.Handlers())
	maps.Copy(verbs, prunes.Handlers())
	maps.Copy(verbs, drains.Handlers(ctx))
	g.Go(func() error {
		// These verbs start work that lives as long as the stages.
		stop, err := pipeline.ServeControl(ctx, d.nc, d.cfg.Host, verbs, d.logger)
		if err != nil {
			return err
		}
		defer stop()
		<-ctx.Done()
		return nil
	})
	g.Go(func() error { return scrubs.Run(ctx) })
	for name, tt := range s.tapeTiers {
		// On stop, write what the ring holds and a flushing filemark, so
		// the handlers waiting for it ack instead of timing out.
		g.Go(func() error {
			<-ctx.Done()
			if err := tt.Flush(context.WithoutCancel(ctx)); err != nil {
				d.logger.Error("flush tape tier at stop", "tier", name, "err", err)
			}
			return nil
		})
	}
}

// openTier opens the target of one configured tier.
func (d *daemon) openTier(t TierConfig) (tier.Target, error) {
	logger := d.logger.With("tier", t.Name)
	var tg tier.Target
	var err error
	switch t.Kind {
	case events.TierDirectory:
		// Only a tier inside the data directory (the default one) is
		// created; any other root must be there (its disk mounted).
		if within(t.Path, d.cfg.DataDir) {
			if err := os.MkdirAll(t.Path, 0o700); err != nil {
				return nil, fmt.Errorf("tier %s: %w", t.Name, err)
			}
		}
		tg, err = dir.Open(dirConfig(&t), logger)
	case events.TierS3:
		tg, err = s3.Open(s3Config(&t), logger)
	case events.TierRclone:
		tg, err = rclone.Open(rcloneConfig(&t), logger)
	default: // tape tiers are opened by openTapeTier, in buildStages
		return nil, fmt.Errorf("tier %s: unknown kind %q", t.Name, t.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("tier %s: %w", t.Name, err)
	}
	return tg, nil
}

// anyFiltered reports whether some tier takes only some files.
func anyFiltered(cfg Config) bool {
	for _, t := range cfg.Tiers {
		if t.filtered() {
			return true
		}
	}
	return false
}

// tierStatus is one tier in `strata status`.
type tierStatus struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Cost      int    `json:"cost"`
	Reachable bool   `json:"reachable"`
	Probe     string `json:"probe,omitempty"` // why it is not reachable
	Lag       uint64 `json:"lag"`             // object.packed events its store stage has yet to handle
	Pending   int    `json:"pending"`         // in progress or waiting for a retry
	Objects   uint64 `json:"objects"`         // good copies in the catalog
	Corrupt   uint64 `json:"corrupt"`         // copies marked corrupt
	// Objects it has no copy of because storing failed: still retried,
	// or given up (retrying cannot help); the latest reason.
	Failing     uint64 `json:"failing"`
	GaveUp      uint64 `json:"gave_up"`
	LastFailure string `json:"last_failure,omitempty"`
	pipeline.OutcomeCounts
}

// probeID is an object id that no object has (the BLAKE3 of nothing is
// not all zeros): asking a tier for it costs one cheap round trip.
const probeID = "0000000000000000000000000000000000000000000000000000000000000000"

// tierStatuses reports every tier: its store stage's backlog and last
// error, its copies in the catalog, and whether it answers now.
func (d *daemon) tierStatuses(ctx context.Context, st pipeline.Status) []tierStatus {
	s := d.stages
	counts := map[string][2]uint64{}
	_, _ = d.cat.Scan(catalog.ScanFuncs{Copy: func(c *catalog.Copy) error {
		n := counts[c.Tier]
		if c.State == catalog.CopyGood {
			n[0]++
		} else {
			n[1]++
		}
		counts[c.Tier] = n
		return nil
	}})
	failed := map[string]*tierStatus{}
	_ = d.cat.EachStoreFailure(func(f catalog.StoreFailure) error {
		ts := failed[f.Tier]
		if ts == nil {
			ts = &tierStatus{}
			failed[f.Tier] = ts
		}
		if f.Permanent {
			ts.GaveUp++
		} else {
			ts.Failing++
		}
		ts.LastFailure = f.Reason
		return nil
	})
	out := make([]tierStatus, len(d.cfg.Tiers))
	var wg sync.WaitGroup
	for i, t := range d.cfg.Tiers {
		ts := tierStatus{Name: t.Name, Kind: t.Kind, Cost: t.Cost, Objects: counts[t.Name][0], Corrupt: counts[t.Name][1]}
		if f := failed[t.Name]; f != nil {
			ts.Failing, ts.GaveUp, ts.LastFailure = f.Failing, f.GaveUp, f.LastFailure
		}
		for _, c := range st.Consumers {
			if c.Name == pipeline.Durable(tier.StageName(t.Name), d.cfg.Host, d.srv.Clustered(), false) {
				ts.Lag, ts.Pending = c.Lag, c.AckPending
			}
		}
		if o := s.outcomes[t.Name]; o != nil {
			ts.OutcomeCounts = o.Counts()
		}
		out[i] = ts
		tg := s.targets[t.Name]
		if tg == nil {
			out[i].Probe = "not open on this host"
			continue
		}
		wg.Go(func() {
			if err := answers(ctx, tg); err != nil {
				out[i].Probe = err.Error()
			} else {
				out[i].Reachable = true
			}
		})
	}
	wg.Wait()
	return out
}

// warnUnreachableTiers says at start, as a warning, which tiers do not
// answer: archiving to them waits (their store stages retry quietly) until
// they do, and a user who started the daemon should not have to find that
// in `strata status`.
func (d *daemon) warnUnreachableTiers(ctx context.Context) {
	for _, t := range d.cfg.Tiers {
		tg := d.stages.targets[t.Name]
		if tg == nil {
			continue
		}
		if err := answers(ctx, tg); err != nil && ctx.Err() == nil {
			d.logger.Warn("tier unreachable: nothing is stored there until it answers (strata status, strata doctor)",
				"tier", t.Name, "kind", t.Kind, "err", err)
		}
	}
}

// answers asks a tier for an object no tier has: nil if it answers.
func answers(ctx context.Context, tg tier.Target) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := tg.Stat(ctx, probeID); err != nil && !errors.Is(err, tier.ErrNotFound) {
		return err
	}
	return nil
}

// closeStages releases what buildStages opened. The interceptor closes
// last among the workers: while it is open, stubs are guarded.
func (s *stages) close(logger *slog.Logger) {
	if s == nil {
		return
	}
	if s.interceptor != nil {
		if err := s.interceptor.Close(); err != nil {
			logger.Error("close interceptor", "err", err)
		}
	}
	for name, tt := range s.tapeTiers {
		if err := tt.Close(); err != nil {
			logger.Error("close tape tier", "tier", name, "err", err)
		}
	}
}

// markStubs puts the interceptor's mark on every stub the catalog knows,
// before the daemon reports ready.
func (d *daemon) markStubs(ctx context.Context, s *stages) error {
	n, missing, err := s.interceptor.MarkCatalogStubs(d.cat)
	if err != nil {
		return err
	}
	// Stubs renamed while the daemon was down are not where the catalog
	// says: find every stub on disk too.
	found, _, err := scanner.FindStubs(ctx, d.cfg.scanPolicy())
	if err == nil {
		err = s.interceptor.MarkFound(found)
	}
	if err != nil {
		return err
	}
	d.logger.Info("stubs marked", "catalog", n, "missing_from_catalog_path", missing, "found_on_disk", len(found), "mode", s.interceptor.Mode())
	return nil
}

// inHotTree reports whether p is inside a configured hot tree.
func (d *daemon) inHotTree(p string) bool { return d.hotRootOf(p) != "" }

// hotRootOf returns the hot tree p belongs to, or "".
func (d *daemon) hotRootOf(p string) string {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return ""
	}
	for _, r := range d.cfg.hotRoots() {
		if p == r || strings.HasPrefix(p, r+"/") {
			return r
		}
	}
	return ""
}
