package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/schemas"
	"github.com/strata-hsm/strata/workers/compressor"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/releaser"
	"github.com/strata-hsm/strata/workers/replicator"
	"github.com/strata-hsm/strata/workers/replicator/dir"
	"github.com/strata-hsm/strata/workers/scanner"
)

// stages holds the daemon's workers, built explicitly from the config (no
// registration through init).
type stages struct {
	failpoints  failpoint.Set
	stagingDir  string
	targets     map[string]replicator.Target
	costs       map[string]int
	reader      *recall.Reader
	interceptor *interceptor.Interceptor
	scanner     *scanner.Loop
	pipeline    []pipeline.Stage
	validator   *schemas.Validator
	recallEv    chan any // interceptor.Completion, interceptor.Failure or an events.Event
}

// stageNamesFor lists the durable consumers the config creates.
func stageNamesFor(cfg Config) []string {
	names := []string{compressor.StageName, releaser.StageName}
	for _, t := range cfg.Tiers {
		names = append(names, replicator.StageName(t.Name))
	}
	return names
}

// buildStages opens the tiers, the recall reader and the interceptor, and
// describes every stage. Nothing runs until runStages.
func (d *daemon) buildStages() (*stages, error) {
	cfg := d.cfg
	s := &stages{
		failpoints: failpoint.New(),
		stagingDir: filepath.Join(cfg.DataDir, "staging"),
		targets:    map[string]replicator.Target{},
		costs:      map[string]int{},
		recallEv:   make(chan any, 4096),
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
		switch t.Kind {
		case events.TierDirectory:
			if err := os.MkdirAll(t.Path, 0o700); err != nil {
				return nil, fmt.Errorf("tier %s: %w", t.Name, err)
			}
			tg, err := dir.Open(dir.Config{Name: t.Name, Root: t.Path}, d.logger.With("tier", t.Name))
			if err != nil {
				return nil, fmt.Errorf("tier %s: %w", t.Name, err)
			}
			s.targets[t.Name] = tg
		default:
			return nil, fmt.Errorf("tier %s: kind %q is not available yet", t.Name, t.Kind)
		}
		s.costs[t.Name] = t.Cost
	}
	s.reader, err = recall.New(recall.Config{
		Targets: s.targets,
		Copies:  d.goodCopies(s.costs),
		OnFailure: func(objectID, tier string, err error) {
			d.logger.Warn("recall from tier failed", "object", objectID, "tier", tier, "err", err)
			if errors.Is(err, replicator.ErrCorrupt) || errors.Is(err, replicator.ErrNotFound) {
				s.recallEv <- &events.ObjectCorrupt{ObjectID: objectID, Tier: tier, Reason: err.Error()}
			}
		},
		Logger: d.logger.With("component", "recall"),
	})
	if err != nil {
		return nil, err
	}
	icfg := interceptor.NewConfig()
	icfg.Mode = interceptor.Mode(cfg.Interceptor.Mode)
	icfg.OnComplete = func(c interceptor.Completion) { s.recallEv <- c }
	icfg.OnFail = func(f interceptor.Failure) { s.recallEv <- f }
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
		name := replicator.StageName(t.Name)
		s.pipeline = append(s.pipeline, replicator.Stage(replicator.StageConfig{
			Target: s.targets[t.Name], Emitter: pipeline.NewEmitter(d.js, host, name),
			Failpoints: s.failpoints, Logger: d.logger.With("stage", name),
		}))
	}
	s.pipeline = append(s.pipeline, releaser.Stage(releaser.StageConfig{
		Catalog: d.cat, Emitter: pipeline.NewEmitter(d.js, host, releaser.StageName),
		Roots: d.hotRoots(), Copies: cfg.Release.Copies, CountingTiers: cfg.Release.From, AllTiers: cfg.tierNames(),
		StagingDir: s.stagingDir, Mark: s.interceptor.Mark, Failpoints: s.failpoints,
		Logger: d.logger.With("stage", releaser.StageName),
	}))
	if roots := d.hotRoots(); len(roots) > 0 {
		s.scanner = scanner.NewLoop(scanner.LoopConfig{
			Policy: d.scanPolicy(roots), Interval: time.Duration(cfg.Policy.ScanInterval),
			Emitter: pipeline.NewEmitter(d.js, host, "scanner"), Skip: d.beingArchived,
			Logger: d.logger.With("stage", "scanner"),
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
	g.Go(func() error { return d.publishRecalls(ctx, s) })
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
}

// markStubs puts the interceptor's mark on every stub the catalog knows,
// before the daemon reports ready.
func (d *daemon) markStubs(s *stages) error {
	n, missing := 0, 0
	err := d.cat.Stubs(func(f catalog.File) error {
		if err := s.interceptor.Mark(f.Path); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				missing++
				d.logger.Warn("stub in the catalog is missing on disk (moved or deleted while the daemon was down?)", "path", f.Path)
				return nil
			}
			return fmt.Errorf("mark stub %s: %w", f.Path, err)
		}
		n++
		return nil
	})
	d.logger.Info("stubs marked", "count", n, "missing", missing, "mode", s.interceptor.Mode())
	return err
}

// publishRecalls turns interceptor callbacks into events, off the
// interceptor's goroutines.
func (d *daemon) publishRecalls(ctx context.Context, s *stages) error {
	em := pipeline.NewEmitter(d.js, d.cfg.Host, "interceptor")
	for {
		var ev events.Event
		select {
		case <-ctx.Done():
			return nil
		case x := <-s.recallEv:
			switch x := x.(type) {
			case interceptor.Completion:
				ev = completedEvent(x)
			case interceptor.Failure:
				ev = failedEvent(x)
			case events.Event:
				ev = x
			}
		}
		if ev == nil {
			continue
		}
		if _, err := em.Emit(ctx, ev, ev.Entity(), fmt.Sprint(time.Now().UnixNano())); err != nil && ctx.Err() == nil {
			d.logger.Error("publish recall event", "kind", ev.Kind(), "err", err)
		}
	}
}

// completedEvent is recall.completed, or file.modified when the file was
// cut below its archived size while it was being recalled (its content is
// no longer the object).
func completedEvent(c interceptor.Completion) events.Event {
	if c.Truncated {
		st, err := statOf(c.Path)
		if err != nil {
			return nil
		}
		return &events.FileModified{FileID: c.FileID, Path: c.Path, ObjectID: c.ObjectID, Stat: st}
	}
	tier := c.Tier
	if tier == "" {
		tier = "none"
	}
	return &events.RecallCompleted{FileID: c.FileID, Path: c.Path, ObjectID: c.ObjectID, Bytes: c.Bytes,
		DurationNS: c.Duration.Nanoseconds(), SourceTier: tier, PID: c.PID, Process: c.Process}
}

func failedEvent(f interceptor.Failure) events.Event {
	if f.FileID == "" || f.ObjectID == "" || f.Path == "" {
		return nil
	}
	return &events.RecallFailed{FileID: f.FileID, Path: f.Path, ObjectID: f.ObjectID,
		Reason: f.Err.Error(), PID: f.PID, Process: f.Process}
}

// statOf is the FileStat of path (generation 0: not needed to describe a
// modification).
func statOf(path string) (events.FileStat, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return events.FileStat{}, err
	}
	return events.FileStat{Size: st.Size, Mode: st.Mode, UID: st.Uid, GID: st.Gid,
		AtimeNS: st.Atim.Nano(), MtimeNS: st.Mtim.Nano(), CtimeNS: st.Ctim.Nano(), Dev: st.Dev, Inode: st.Ino}, nil
}

// goodCopies answers the recall reader from the catalog.
func (d *daemon) goodCopies(costs map[string]int) func(string) ([]recall.Copy, error) {
	return func(objectID string) ([]recall.Copy, error) {
		cps, err := d.cat.Copies(objectID)
		if err != nil {
			return nil, err
		}
		var out []recall.Copy
		for _, c := range cps {
			if c.State == catalog.CopyGood {
				out = append(out, recall.Copy{Tier: c.Tier, Cost: costs[c.Tier]})
			}
		}
		return out, nil
	}
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

// beingArchived reports whether the catalog already has c on its way.
func (d *daemon) beingArchived(c scanner.Candidate) bool {
	f, err := d.cat.File(c.FileID)
	return err == nil && f.State == catalog.StateArchiving && f.Stat.SameContent(c.Stat)
}

// scanPolicy turns the config into the scanner's policy.
func (d *daemon) scanPolicy(roots []string) scanner.Policy {
	pc := d.cfg.Policy
	p := scanner.Policy{
		Roots: roots, DataDir: d.cfg.DataDir, MinSize: int64(pc.MinSize),
		Include: pc.Include, Exclude: pc.Exclude, PinnedPaths: pc.Pinned,
		Pinned: func(path string) bool {
			ok, err := d.cat.Pinned(path)
			return err != nil || ok // unsure: treat as pinned
		},
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
