package scrubber

// The scrubber is not a consumer: it runs when asked or on a timer.
//
//	consumes  control verbs scrub and scrub-status; a timer (Service.Interval)
//	emits     strata.<host>.object.verified  a copy re-read and found good
//	          strata.<host>.object.corrupt   a copy damaged or missing
//	          strata.<host>.object.stored    a bad copy re-created from a good one

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tier"
)

// StartRequest is the control verb "scrub": start a run.
type StartRequest struct {
	Tier   string  `json:"tier,omitempty"`
	Sample float64 `json:"sample,omitempty"` // percent, (0, 100]; 0: Service.Sample
	Rate   int64   `json:"rate,omitempty"`   // bytes/s; 0: Service.Rate; -1: unbounded
}

// Started answers StartRequest.
type Started struct {
	RunID string `json:"run_id"`
	New   bool   `json:"new"` // false: a scrub was already running; this is its id
}

// StatusRequest is the control verb "scrub-status": a run's progress.
type StatusRequest struct {
	RunID string `json:"run_id"`
}

// copyScanner lists the catalog's copies.
type copyScanner interface {
	Scan(fns catalog.ScanFuncs) (uint64, error)
}

// repairer re-creates a copy from a good one elsewhere (recall.Reader).
type repairer interface {
	Repair(ctx context.Context, objectID string, to tier.Target) (from, location string, err error)
}

// Schedule is the [scrub] section of strata.toml.
type Schedule struct {
	Interval time.Duration // 0: no scheduled scrub
	Sample   float64       // percent of the copies a scheduled run re-reads (default 100)
	Rate     int64         // bytes/s read at most by default (default 100 MiB)
}

// EnsureDefaults fills zero fields with their defaults.
func (s *Schedule) EnsureDefaults() {
	s.Sample = cmp.Or(s.Sample, 100)
	s.Rate = cmp.Or(s.Rate, 100<<20)
}

// Validate checks s after EnsureDefaults (*pipeline.ConfigError).
func (s *Schedule) Validate() error {
	switch {
	case s.Interval < 0 || s.Interval > 0 && s.Interval < time.Minute:
		return pipeline.BadConfig("interval", s.Interval.String(), "want 0 (off) or at least 1m")
	case s.Sample <= 0 || s.Sample > 100:
		return pipeline.BadConfig("sample", s.Sample, "want a percentage in (0, 100]")
	case s.Rate < 1<<20:
		return pipeline.BadConfig("rate", s.Rate, "want at least 1 MiB (bytes per second)")
	}
	return nil
}

// Service runs scrubs in the daemon: on request and every Interval.
type Service struct {
	Schedule
	Targets  map[string]tier.Target // this host's tiers by name
	Catalog  copyScanner
	Repairer repairer
	Emitter  *pipeline.Emitter
	Logger   *slog.Logger
	// Failpoints: crash tests arm the scrub failpoints.
	Failpoints failpoint.Set

	jobs *Jobs
}

// Handlers returns the verbs scrub and scrub-status; runs started through
// them live as long as ctx.
func (s *Service) Handlers(ctx context.Context) map[string]pipeline.ControlHandler {
	return map[string]pipeline.ControlHandler{
		"scrub": pipeline.Verb("scrub", func(_ context.Context, req StartRequest) (any, error) {
			return s.Start(ctx, req)
		}),
		"scrub-status": pipeline.Verb("scrub-status", func(_ context.Context, req StatusRequest) (any, error) {
			st, ok := s.table().Status(req.RunID)
			if !ok {
				return nil, fmt.Errorf("scrub-status: no scrub run %q", req.RunID)
			}
			return st, nil
		}),
	}
}

func (s *Service) table() *Jobs {
	if s.jobs == nil {
		s.jobs = NewJobs()
	}
	return s.jobs
}

// Start starts a run (or reports the one in progress) that lives as long
// as ctx.
func (s *Service) Start(ctx context.Context, req StartRequest) (Started, error) {
	if req.Tier != "" {
		if _, ok := s.Targets[req.Tier]; !ok {
			names := make([]string, 0, len(s.Targets))
			for n := range s.Targets {
				names = append(names, n)
			}
			slices.Sort(names)
			return Started{}, fmt.Errorf("scrub: tier %q is not configured (tiers: %s)", req.Tier, strings.Join(names, ", "))
		}
	}
	if req.Sample < 0 || req.Sample > 100 {
		return Started{}, fmt.Errorf("scrub: sample %v%%: want (0, 100]", req.Sample)
	}
	sample := req.Sample
	if sample == 0 {
		sample = 100
	}
	rate := req.Rate
	switch {
	case rate == 0:
		rate = s.Rate
	case rate < 0:
		rate = 0
	}
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	id, isNew := s.table().Start(ctx, Config{
		Targets: s.Targets,
		Copies: func(fn func(Copy) error) error {
			_, err := s.Catalog.Scan(catalog.ScanFuncs{Copy: func(c *catalog.Copy) error {
				return fn(Copy{ObjectID: c.ObjectID, Tier: c.Tier, Size: c.Size, PackedSize: c.PackedSize,
					PackedSum: c.PackedSum, Corrupt: c.State == catalog.CopyCorrupt})
			}})
			return err
		},
		Repair: s.Repairer.Repair,
		Emit: func(ctx context.Context, ev events.Event, parts ...string) error {
			_, err := s.Emitter.Emit(ctx, ev, parts...)
			return err
		},
		Tier: req.Tier, Sample: sample / 100, Rate: rate, RunID: runID,
		Logger: s.Logger.With("run", runID), Failpoints: s.Failpoints,
	})
	if isNew {
		s.Logger.Info("scrub started", "run", id, "tier", req.Tier, "sample", sample, "rate", rate)
	}
	return Started{RunID: id, New: isNew}, nil
}

// Run starts a scrub every Interval until ctx ends (nothing without an
// Interval).
func (s *Service) Run(ctx context.Context) error {
	if s.Interval <= 0 {
		return nil
	}
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := s.Start(ctx, StartRequest{Sample: s.Sample}); err != nil {
				s.Logger.Error("scheduled scrub", "err", err)
			}
		}
	}
}
