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
	"github.com/strata-hsm/strata/workers/object"
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
	filters     map[string]*tier.Filter // nil: the tier takes every file
	tiers       map[string]*tierState
	guard       *pruner.Guard
	tapeTiers   map[string]*tapewriter.Tier // tape tiers bring their own store stage
	reader      *recall.Reader
	interceptor *interceptor.Interceptor
	scanner     *scanner.Loop
	pipeline    []pipeline.Stage
	validator   *schemas.Validator
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
		costs:      map[string]int{},
		filters:    map[string]*tier.Filter{},
		tiers:      map[string]*tierState{},
		guard:      pruner.NewGuard(),
		tapeTiers:  map[string]*tapewriter.Tier{},
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
		s.tiers[t.Name] = &tierState{kind: t.Kind}
	}
	s.reader, err = recall.New(recall.Config{
		Targets: s.targets, Catalog: d.cat, Costs: s.costs,
		Emitter: pipeline.NewEmitter(d.js, cfg.Host, "recall"),
		Logger:  d.logger.With("component", "recall"),
	})
	if err != nil {
		return nil, err
	}
	icfg := interceptor.NewConfig()
	icfg.Mode = interceptor.Mode(cfg.Interceptor.Mode)
	icfg.WholeFileBelow, icfg.WholeFilePrograms = int64(cfg.Interceptor.WholeFileBelow), cfg.Interceptor.WholeFilePrograms
	icfg.Failpoints = s.failpoints
	if cfg.Interceptor.HolderOn() {
		dir := filepath.Join(cfg.DataDir, "interceptor")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("interceptor directory: %w", err)
		}
		icfg.JournalDir, icfg.HolderSocket = dir, filepath.Join(dir, "holder.sock")
		if len(icfg.HolderSocket) > maxSocketPath {
			return nil, fmt.Errorf("interceptor: holder socket %s is longer than %d bytes (a unix socket limit): use a shorter data directory, or interceptor.holder = false", icfg.HolderSocket, maxSocketPath)
		}
	}
	icfg.Emitter = pipeline.NewEmitter(d.js, cfg.Host, "interceptor")
	if s.interceptor, err = interceptor.Open(icfg, s.reader, d.logger.With("stage", "interceptor")); err != nil {
		return nil, fmt.Errorf("interceptor: %w", err)
	}

	host := cfg.Host
	comp, err := compressor.New(compressor.Config{StagingDir: s.stagingDir, Object: object.Options{
		FrameSize: int(cfg.Compressor.FrameSize), Level: cfg.Compressor.Level, Concurrency: cfg.Compressor.Concurrency,
	}})
	if err != nil {
		return nil, err
	}
	s.pipeline = append(s.pipeline, compressor.Stage(compressor.StageConfig{
		Compressor: comp, Emitter: pipeline.NewEmitter(d.js, host, compressor.StageName),
		InHotTree: d.inHotTree, Failpoints: s.failpoints, Logger: d.logger.With("stage", compressor.StageName),
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
				h, roots := st.Handle, d.hotRoots()
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
				Failpoints: s.failpoints, Logger: d.logger.With("stage", name), Filter: filter, Roots: d.hotRoots(),
			})
			// A tier may be down for days: keep retrying (every 5 minutes
			// at the end) instead of dead-lettering its copies after a few
			// tries. Permanent errors are still dead-lettered at once.
			st.MaxDeliver, st.Backoff = storeMaxDeliver, storeBackoff
		}
		st.Handle = s.tiers[t.Name].track(st.Handle)
		s.pipeline = append(s.pipeline, st)
	}
	// The releaser removes a staged object once every tier has a copy; with
	// tiers that take only some files, the unstage stage does it instead
	// (once every tier that wants the object has its copy).
	allTiers := cfg.tierNames()
	if anyFiltered(cfg) {
		allTiers = nil
		s.pipeline = append(s.pipeline, store.Unstage(store.UnstageConfig{
			Catalog: d.cat, Host: host, StagingDir: s.stagingDir, Filters: s.filters, Roots: d.hotRoots(),
			Logger: d.logger.With("stage", store.UnstageName),
		}))
	}
	s.pipeline = append(s.pipeline, interceptor.PrefetchStage(host, d.logger.With("stage", interceptor.PrefetchStageName)))
	s.pipeline = append(s.pipeline, releaser.Stage(releaser.StageConfig{
		Catalog: d.cat, Emitter: pipeline.NewEmitter(d.js, host, releaser.StageName),
		Roots: d.hotRoots(), Copies: cfg.Release.Copies, CountingTiers: cfg.Release.From, AllTiers: allTiers,
		StagingDir: s.stagingDir, Mark: s.interceptor.Hold, Unhold: s.interceptor.Unhold, Failpoints: s.failpoints,
		Logger: d.logger.With("stage", releaser.StageName),
	}))
	if roots := d.hotRoots(); len(roots) > 0 {
		em, logger := pipeline.NewEmitter(d.js, host, "scanner"), d.logger.With("stage", "scanner")
		s.scanner = scanner.NewLoop(scanner.LoopConfig{
			Policy: d.scanPolicy(roots), Interval: time.Duration(cfg.Policy.ScanInterval), Emitter: em, Catalog: d.cat,
			Reconciler: &scanner.Reconciler{Policy: d.scanPolicy(roots), Catalog: d.cat, Marker: s.interceptor, Emitter: em, Logger: logger},
			Logger:     logger,
		})
	}
	return s, nil
}

// runStages runs every stage until ctx ends; the first failure stops all.
func (d *daemon) runStages(ctx context.Context, s *stages, g interface{ Go(func() error) }) {
	runner := &pipeline.Runner{JS: d.js, Host: d.cfg.Host, Logger: d.logger, Validate: s.validator.Validate}
	for _, st := range s.pipeline {
		g.Go(func() error { return runner.Run(ctx, st) })
	}
	if s.scanner != nil {
		g.Go(func() error { return s.scanner.Run(ctx) })
	}
	scrubs := &scrubber.Service{Targets: s.targets, Catalog: d.cat, Repairer: s.reader,
		Emitter:  pipeline.NewEmitter(d.js, d.cfg.Host, "scrub"),
		Interval: time.Duration(d.cfg.Scrub.Interval), Sample: float64(d.cfg.Scrub.Sample), Rate: int64(d.cfg.Scrub.Rate),
		Logger: d.logger.With("component", "scrub")}
	prunes := &pruner.Service{Catalog: d.cat, JS: d.js, Emitter: pipeline.NewEmitter(d.js, d.cfg.Host, "prune"),
		Targets: s.targets, Guard: s.guard, StagingDir: s.stagingDir,
		KeepDeleted: time.Duration(d.cfg.Retention.KeepDeleted), KeepVersions: d.cfg.Retention.KeepVersions,
		Logger: d.logger.With("component", "prune")}
	verbs := scrubs.Handlers(ctx)
	maps.Copy(verbs, prunes.Handlers())
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
		if err := os.MkdirAll(t.Path, 0o700); err != nil {
			return nil, fmt.Errorf("tier %s: %w", t.Name, err)
		}
		tg, err = dir.Open(dir.Config{Name: t.Name, Root: t.Path}, logger)
	case events.TierS3:
		tg, err = s3.Open(s3.Config{Name: t.Name, Endpoint: t.Endpoint, Region: t.Region, Bucket: t.Bucket,
			Prefix: t.Prefix, AccessKey: t.AccessKey, SecretKey: t.SecretKey, NoTLS: !t.useTLS()}, logger)
	case events.TierRclone:
		tg, err = rclone.Open(rclone.Config{Name: t.Name, Remote: t.Remote, Binary: t.Binary, Env: t.envList()}, logger)
	default: // tape tiers are opened by openTapeTier, in buildStages
		return nil, fmt.Errorf("tier %s: unknown kind %q", t.Name, t.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("tier %s: %w", t.Name, err)
	}
	return tg, nil
}

// The store stages' retry policy: about two weeks of retries.
var storeBackoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute}

const storeMaxDeliver = 4000

// anyFiltered reports whether some tier takes only some files.
func anyFiltered(cfg Config) bool {
	for _, t := range cfg.Tiers {
		if t.filtered() {
			return true
		}
	}
	return false
}

// tierState is what `strata status` shows of a tier's store stage.
type tierState struct {
	kind string
	mu   struct {
		sync.Mutex
		stored    uint64    // copies stored by this daemon since start
		lastOK    time.Time // last copy stored
		lastErr   string
		lastErrAt time.Time
	}
}

// track wraps a store stage's handler to record its outcomes.
func (ts *tierState) track(h func(context.Context, events.Envelope, events.Event) error) func(context.Context, events.Envelope, events.Event) error {
	return func(ctx context.Context, env events.Envelope, ev events.Event) error {
		err := h(ctx, env, ev)
		if ctx.Err() != nil && err != nil {
			return err
		}
		ts.mu.Lock()
		defer ts.mu.Unlock()
		if err != nil {
			ts.mu.lastErr, ts.mu.lastErrAt = err.Error(), time.Now()
		} else {
			ts.mu.stored++
			ts.mu.lastOK = time.Now()
		}
		return err
	}
}

// tierStatus is one tier in `strata status`.
type tierStatus struct {
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`
	Cost      int       `json:"cost"`
	Reachable bool      `json:"reachable"`
	Probe     string    `json:"probe,omitempty"` // why it is not reachable
	Lag       uint64    `json:"lag"`             // object.packed events its store stage has yet to handle
	Pending   int       `json:"pending"`         // in progress or waiting for a retry
	Objects   uint64    `json:"objects"`         // good copies in the catalog
	Corrupt   uint64    `json:"corrupt"`         // copies marked corrupt
	Stored    uint64    `json:"stored_since_start"`
	LastOK    time.Time `json:"last_ok,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	LastErrAt time.Time `json:"last_error_at,omitzero"`
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
	out := make([]tierStatus, len(d.cfg.Tiers))
	var wg sync.WaitGroup
	for i, t := range d.cfg.Tiers {
		ts := tierStatus{Name: t.Name, Kind: t.Kind, Cost: t.Cost, Objects: counts[t.Name][0], Corrupt: counts[t.Name][1]}
		for _, c := range st.Consumers {
			if c.Name == tier.StageName(t.Name) {
				ts.Lag, ts.Pending = c.Lag, c.AckPending
			}
		}
		if state := s.tiers[t.Name]; state != nil {
			state.mu.Lock()
			ts.Stored, ts.LastOK, ts.LastError, ts.LastErrAt = state.mu.stored, state.mu.lastOK, state.mu.lastErr, state.mu.lastErrAt
			state.mu.Unlock()
		}
		out[i] = ts
		tg := s.targets[t.Name]
		if tg == nil {
			out[i].Probe = "not open on this host"
			continue
		}
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := tg.Stat(pctx, probeID)
			if err == nil || errors.Is(err, tier.ErrNotFound) {
				out[i].Reachable = true
			} else {
				out[i].Probe = err.Error()
			}
		})
	}
	wg.Wait()
	return out
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
	found, _, err := scanner.FindStubs(ctx, d.scanPolicy(d.hotRoots()))
	if err == nil {
		err = s.interceptor.MarkFound(found)
	}
	if err != nil {
		return err
	}
	d.logger.Info("stubs marked", "catalog", n, "missing_from_catalog_path", missing, "found_on_disk", len(found), "mode", s.interceptor.Mode())
	return nil
}

// hotRoots lists the configured hot trees.
func (d *daemon) hotRoots() []string {
	var out []string
	for _, h := range d.cfg.Hot {
		out = append(out, h.Path)
	}
	return out
}

// inHotTree reports whether p is inside a configured hot tree.
func (d *daemon) inHotTree(p string) bool { return d.hotRootOf(p) != "" }

// hotRootOf returns the hot tree p belongs to, or "".
func (d *daemon) hotRootOf(p string) string {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return ""
	}
	for _, r := range d.hotRoots() {
		if p == r || strings.HasPrefix(p, r+"/") {
			return r
		}
	}
	return ""
}

// scanPolicy turns the config into the scanner's policy.
func (d *daemon) scanPolicy(roots []string) scanner.Policy {
	pc := d.cfg.Policy
	p := scanner.Policy{
		Roots: roots, DataDir: d.cfg.DataDir, MinSize: int64(pc.MinSize),
		Include: pc.Include, Exclude: pc.Exclude, PinnedPaths: pc.Pinned,
		Pinned:   scanner.PinnedByCatalog(d.cat),
		AgeMatch: scanner.AgeAll,
	}
	age := time.Duration(pc.MinAge)
	switch pc.AgeBy {
	case "atime":
		p.MinAtimeAge = age
	case "mtime":
		p.MinMtimeAge = age
	case "either":
		p.MinAtimeAge, p.MinMtimeAge, p.AgeMatch = age, age, scanner.AgeAny
	default:
		p.MinAtimeAge, p.MinMtimeAge = age, age
	}
	p.HighWatermark, p.LowWatermark = float64(pc.HighWatermark), float64(pc.LowWatermark)
	for _, h := range d.cfg.Hot {
		p.CrossFilesystems = p.CrossFilesystems || h.CrossMounts
	}
	p.EnsureDefaults()
	return p
}
