// Package pruner applies the retention policy: it finds the objects that
// no live file and no kept version needs any more (objects of files deleted
// longer ago than the retention, and versions superseded longer ago than it
// and beyond the newest KeepVersions) and removes their copies from every
// tier, publishing object.deleted per copy.
//
// # What is never pruned
//
// An object is a candidate only through a version that retention lets go,
// and it is pruned only if no other reference to it is kept: objects are
// shared by files with identical content, and by versions of one file, so
// one kept reference keeps the object on every tier. The current version of
// every file that is not deleted is always kept, whatever the policy. An
// object that no file references at all is left alone (it may belong to a
// file whose events the catalog has not seen yet).
//
// # Races with new references
//
// A file with the content of a pruned object may be archived while prune
// runs. Apply therefore takes the Guard's lock of each object, re-checks it
// against a catalog caught up with the log (Config.Recheck), and deletes it
// while still holding the lock; store stages Put through Guard.Wrap, which
// takes the same lock. A Put that comes after a delete finds no copy and
// uploads the staged object again, and its object.stored follows the
// object.deleted in the log.
package pruner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tier"
)

// Policy is the retention policy.
type Policy struct {
	// KeepDeleted: objects of a deleted file are kept this long after its
	// deletion, and a superseded version this long after the version that
	// replaced it was archived.
	KeepDeleted time.Duration
	// KeepVersions: the newest KeepVersions versions of a live file are
	// kept whatever their age (at least 1: the current version).
	KeepVersions int
	// Now is the time the ages are measured at.
	Now time.Time
}

// Validate checks the policy.
func (p Policy) Validate() error {
	if p.KeepDeleted < 0 {
		return pipeline.BadConfig("keep_deleted", p.KeepDeleted.String(), "negative")
	}
	if p.KeepVersions < 1 {
		return pipeline.BadConfig("keep_versions", p.KeepVersions, "want at least 1 (the current version is always kept)")
	}
	if p.Now.IsZero() {
		return errors.New("pruner: Now is not set")
	}
	return nil
}

// Candidate is an object that retention lets go, with its copies.
type Candidate struct {
	ObjectID   string   `json:"object_id"`
	Size       int64    `json:"size"`        // uncompressed bytes
	PackedSize int64    `json:"packed_size"` // bytes on each tier
	Reason     string   `json:"reason"`      // why (one of the released references)
	Tiers      []string `json:"tiers"`       // tiers holding a copy (good or corrupt)
	// Deleted lists the tiers the copy was removed from (Apply only).
	Deleted []string `json:"deleted,omitempty"`
	// Errors lists the tiers where removal failed, with why (Apply only).
	Errors []string `json:"errors,omitempty"`
	// Kept lists the tiers that cannot delete one object (tape: space comes
	// back when the volume is relabelled); their copies stay (Apply only).
	Kept []string `json:"kept,omitempty"`
}

// catalogView is what the pruner reads from the catalog.
type catalogView interface {
	Scan(fns catalog.ScanFuncs) (uint64, error)
	Copies(objectID string) ([]catalog.Copy, error)
	FilesByObject(objectID string) ([]catalog.File, error)
	Versions(fileID string) ([]catalog.Version, error)
}

// refs classifies the object references of one file: kept, and released
// with a reason.
func refs(f *catalog.File, vs []catalog.Version, p Policy, keep func(oid string), release func(oid, reason string)) {
	if f.State == catalog.StateDeleted {
		if p.Now.Sub(f.Updated) < p.KeepDeleted {
			for _, v := range vs {
				keep(v.ObjectID)
			}
			if f.ObjectID != "" {
				keep(f.ObjectID)
			}
			return
		}
		for _, v := range vs {
			release(v.ObjectID, fmt.Sprintf("file %s deleted %s", f.Path, f.Updated.UTC().Format(time.RFC3339)))
		}
		if f.ObjectID != "" {
			release(f.ObjectID, fmt.Sprintf("file %s deleted %s", f.Path, f.Updated.UTC().Format(time.RFC3339)))
		}
		return
	}
	if f.ObjectID != "" {
		keep(f.ObjectID) // the current version of a live file: always
	}
	sorted := append([]catalog.Version(nil), vs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Number < sorted[j].Number })
	for i, v := range sorted {
		newest := len(sorted) - i // 1 for the newest
		if newest <= p.KeepVersions || i+1 >= len(sorted) {
			keep(v.ObjectID)
			continue
		}
		superseded := sorted[i+1].ArchivedAt
		if p.Now.Sub(superseded) < p.KeepDeleted {
			keep(v.ObjectID)
			continue
		}
		release(v.ObjectID, fmt.Sprintf("version %d of %s superseded %s", v.Number, f.Path, superseded.UTC().Format(time.RFC3339)))
	}
}

// Plan walks the catalog and returns the objects retention lets go, in
// object id order, each with the tiers that hold a copy. It changes
// nothing.
func Plan(cat catalogView, p Policy) ([]Candidate, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	kept := map[string]bool{}
	released := map[string]string{}
	_, err := cat.Scan(catalog.ScanFuncs{File: func(f *catalog.File, vs []catalog.Version) error {
		refs(f, vs, p, func(oid string) { kept[oid] = true }, func(oid, reason string) {
			if _, ok := released[oid]; !ok {
				released[oid] = reason
			}
		})
		return nil
	}})
	if err != nil {
		return nil, fmt.Errorf("prune plan: %w", err)
	}
	var out []Candidate
	for oid, reason := range released {
		if kept[oid] {
			continue
		}
		cps, err := cat.Copies(oid)
		if err != nil {
			return nil, fmt.Errorf("prune plan: copies of %s: %w", oid, err)
		}
		if len(cps) == 0 {
			continue // nothing stored: nothing to prune
		}
		c := Candidate{ObjectID: oid, Reason: reason}
		for _, cp := range cps {
			c.Tiers = append(c.Tiers, cp.Tier)
			c.Size, c.PackedSize = cp.Size, cp.PackedSize
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ObjectID < out[j].ObjectID })
	return out, nil
}

// Unreferenced re-checks one object against the catalog as it is now: it
// reports whether retention still lets go of every reference to it.
func Unreferenced(cat catalogView, p Policy, objectID string) (bool, error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	files, err := cat.FilesByObject(objectID)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return false, err
	}
	if len(files) == 0 {
		return false, nil // no reference known: never prune
	}
	keep := false
	for i := range files {
		vs, err := cat.Versions(files[i].ID)
		if err != nil && !errors.Is(err, catalog.ErrNotFound) {
			return false, err
		}
		refs(&files[i], vs, p, func(oid string) { keep = keep || oid == objectID }, func(string, string) {})
	}
	return !keep, nil
}

// ApplyConfig is what Apply needs besides the plan.
type ApplyConfig struct {
	Catalog catalogView
	Policy  Policy
	// Targets are this host's tiers by name; copies on other tiers are
	// reported as errors and left alone.
	Targets map[string]tier.Target
	// Guard serialises deletes with the store stages' Puts.
	Guard *Guard
	// Sync is called with each object's lock held, before the re-check:
	// it must bring the catalog up to date with the log (and may refuse,
	// e.g. while the object is staged for a new archive).
	Sync func(ctx context.Context, objectID string) error
	// Emit publishes an event with a deterministic id built from parts.
	Emit   func(ctx context.Context, ev events.Event, idParts ...string) error
	Logger *slog.Logger
	// Failpoints: crash tests arm FailAfterDelete and FailAfterPublish.
	Failpoints failpoint.Set
}

// Failpoints of a prune, in the order a copy reaches them.
var (
	FailAfterDelete  = failpoint.Define("prune.after-delete", "a copy is deleted from its tier, object.deleted not yet published")
	FailAfterPublish = failpoint.Define("prune.after-publish", "object.deleted published, the next copy not yet deleted")
)

// Apply removes each candidate's copies from every tier, after re-checking
// under the object's lock that nothing references it, and publishes
// object.deleted per removed copy. It returns the candidates with Deleted
// and Errors filled in; it stops early only when ctx ends.
func Apply(ctx context.Context, cfg ApplyConfig, plan []Candidate) ([]Candidate, error) {
	out := make([]Candidate, 0, len(plan))
	for _, c := range plan {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		c = applyOne(ctx, cfg, c)
		out = append(out, c)
	}
	return out, nil
}

func applyOne(ctx context.Context, cfg ApplyConfig, c Candidate) Candidate {
	unlock := cfg.Guard.Lock(c.ObjectID)
	defer unlock()
	fail := func(tier string, err error) {
		c.Errors = append(c.Errors, tier+": "+err.Error())
		cfg.Logger.Warn("prune", "object", c.ObjectID, "tier", tier, "err", err)
	}
	if err := cfg.Sync(ctx, c.ObjectID); err != nil {
		fail("*", err)
		return c
	}
	ok, err := Unreferenced(cfg.Catalog, cfg.Policy, c.ObjectID)
	if err != nil || !ok {
		if err == nil {
			err = errors.New("referenced again; kept")
		}
		fail("*", err)
		return c
	}
	cps, err := cfg.Catalog.Copies(c.ObjectID)
	if err != nil {
		fail("*", err)
		return c
	}
	c.Tiers = c.Tiers[:0]
	for _, cp := range cps {
		c.Tiers = append(c.Tiers, cp.Tier)
		t, ok := cfg.Targets[cp.Tier]
		if !ok {
			fail(cp.Tier, errors.New("tier is not configured on this host"))
			continue
		}
		if err := t.Delete(ctx, c.ObjectID); errors.Is(err, tier.ErrNotSupported) {
			// Tape: the copy stays until its volume is relabelled; it is
			// not reported deleted (it is not), and not as a failure.
			cfg.Logger.Info("prune: copy kept on a tier that cannot delete", "object", c.ObjectID, "tier", cp.Tier)
			c.Kept = append(c.Kept, cp.Tier)
			continue
		} else if err != nil {
			fail(cp.Tier, err)
			continue
		}
		cfg.Failpoints.Hit(FailAfterDelete)
		// The copy's sequence makes the id unique per stored copy: a copy
		// stored again later and pruned again gets a new event.
		if err := cfg.Emit(ctx, &events.ObjectDeleted{ObjectID: c.ObjectID, Tier: cp.Tier, Reason: "retention: " + c.Reason},
			c.ObjectID, cp.Tier, fmt.Sprint(cp.Seq)); err != nil {
			fail(cp.Tier, fmt.Errorf("deleted, but object.deleted not published: %w", err))
			continue
		}
		cfg.Failpoints.Hit(FailAfterPublish)
		c.Deleted = append(c.Deleted, cp.Tier)
		cfg.Logger.Info("pruned", "object", c.ObjectID, "tier", cp.Tier, "reason", c.Reason)
	}
	return c
}

// Guard is a lock per object id shared by prune and the store stages.
type Guard struct {
	mu    sync.Mutex
	locks map[string]*guardEntry // protected by mu
}

type guardEntry struct {
	mu   sync.Mutex
	refs int // protected by Guard.mu
}

// NewGuard returns an empty Guard.
func NewGuard() *Guard { return &Guard{locks: map[string]*guardEntry{}} }

// Lock takes the lock of id and returns its unlock.
func (g *Guard) Lock(id string) (unlock func()) {
	g.mu.Lock()
	e := g.locks[id]
	if e == nil {
		e = &guardEntry{}
		g.locks[id] = e
	}
	e.refs++
	g.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		g.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(g.locks, id)
		}
		g.mu.Unlock()
	}
}

// Wrap returns t with Put taking the object's lock, so that a Put and a
// prune of one object never overlap. Every other method is t's.
func (g *Guard) Wrap(t tier.Target) tier.Target { return &guarded{Target: t, g: g} }

type guarded struct {
	tier.Target
	g *Guard
}

// Unwrap is the target the guard wraps (tier.As).
func (t *guarded) Unwrap() tier.Target { return t.Target }

func (t *guarded) Put(ctx context.Context, o tier.Object) (string, error) {
	unlock := t.g.Lock(o.ID)
	defer unlock()
	return t.Target.Put(ctx, o)
}
