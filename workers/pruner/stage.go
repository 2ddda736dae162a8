package pruner

// The pruner is not a consumer: it runs when asked (strata prune).
//
//	consumes  control verb prune
//	emits     strata.<host>.object.deleted  a copy removed by retention

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tier"
)

// Request is the control verb "prune".
type Request struct {
	Apply bool `json:"apply"` // false: a dry run
}

// Reply lists what retention lets go and, with Apply, what was removed.
type Reply struct {
	Applied      bool        `json:"applied"`
	KeepDeleted  string      `json:"keep_deleted"`
	KeepVersions int         `json:"keep_versions"`
	Objects      []Candidate `json:"objects"`
	Copies       int         `json:"copies"`       // copies listed
	PackedBytes  int64       `json:"packed_bytes"` // their packed bytes
	Deleted      int         `json:"deleted"`      // copies removed (Apply)
	Errors       int         `json:"errors"`       // objects with a failure (Apply)
	CatalogSeq   uint64      `json:"catalog_seq"`  // the plan's catalog sequence
}

// serviceCatalog is what the service needs of the catalog.
type serviceCatalog interface {
	catalogView
	LastSeq() uint64
	WaitSeq(ctx context.Context, seq uint64) error
}

// Service answers "prune" in the daemon.
type Service struct {
	Catalog      serviceCatalog
	JS           jetstream.JetStream
	Emitter      *pipeline.Emitter
	Targets      map[string]tier.Target // this host's tiers
	Guard        *Guard
	StagingDir   string // objects staged there are being archived: never pruned
	KeepDeleted  time.Duration
	KeepVersions int
	Logger       *slog.Logger
	Failpoints   failpoint.Set
}

// Handlers returns the verb prune.
func (s *Service) Handlers() map[string]pipeline.ControlHandler {
	return map[string]pipeline.ControlHandler{"prune": pipeline.Verb("prune", s.prune)}
}

// catchUp waits until the catalog has applied everything in the log.
func (s *Service) catchUp(ctx context.Context) error {
	last, err := pipeline.LastSeq(ctx, s.JS)
	if err != nil {
		return err
	}
	return s.Catalog.WaitSeq(ctx, last)
}

func (s *Service) prune(ctx context.Context, req Request) (any, error) {
	// Plan on a catalog caught up with the log.
	if err := s.catchUp(ctx); err != nil {
		return nil, err
	}
	pol := Policy{KeepDeleted: s.KeepDeleted, KeepVersions: s.KeepVersions, Now: time.Now()}
	plan, err := Plan(s.Catalog, pol)
	if err != nil {
		return nil, err
	}
	rep := Reply{Applied: req.Apply, KeepDeleted: s.KeepDeleted.String(), KeepVersions: s.KeepVersions,
		CatalogSeq: s.Catalog.LastSeq(), Objects: []Candidate{}}
	if req.Apply && len(plan) > 0 {
		plan, err = Apply(ctx, ApplyConfig{
			Catalog: s.Catalog, Policy: pol, Targets: s.Targets, Guard: s.Guard,
			Sync: func(ctx context.Context, oid string) error {
				// A staged object is being archived again (same content):
				// never prune under an archive in flight.
				if _, err := os.Stat(filepath.Join(s.StagingDir, oid+".zst")); err == nil {
					return errors.New("staged for an archive in progress; kept")
				}
				return s.catchUp(ctx)
			},
			Emit: func(ctx context.Context, ev events.Event, parts ...string) error {
				_, err := s.Emitter.Emit(ctx, ev, parts...)
				return err
			},
			Logger: s.Logger, Failpoints: s.Failpoints,
		}, plan)
		if err != nil {
			return nil, err
		}
	}
	for _, c := range plan {
		rep.Objects = append(rep.Objects, c)
		rep.Copies += len(c.Tiers)
		rep.PackedBytes += c.PackedSize * int64(len(c.Tiers))
		rep.Deleted += len(c.Deleted)
		if len(c.Errors) > 0 {
			rep.Errors++
		}
	}
	return rep, nil
}
