package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/tier"
)

// Draining a tier (strata tier drain NAME) is how a tier is taken out of
// service: from the moment it starts, the tier's copies no longer count
// towards release.copies (so no new file comes to depend on it); every
// object with a good copy on the tier and fewer than release.copies good
// copies on the other counting tiers is copied, from its best good copy,
// to tiers that lack it; once nothing depends on the tier it can be
// removed from the configuration. The daemon warns at start about a tier
// removed while objects still depend on it (Dependents).

// copier makes a good copy of an object on a target from a good copy
// elsewhere and returns the event that records it (recall.Reader.CopyTo).
type copier interface {
	CopyTo(ctx context.Context, objectID string, size int64, to tier.Target) (*events.ObjectStored, string, error)
}

// Drainer runs drains and answers their control verbs.
type Drainer struct {
	Catalog *catalog.Catalog
	Copier  copier
	Targets map[string]tier.Target // this host's tiers, by name
	Filters map[string]*tier.Filter
	Roots   []string // hot trees (filters match paths relative to them)
	// Counting are the tiers whose copies count (release.from); empty:
	// every tier.
	Counting []string
	Copies   int // release.copies
	Draining *tier.Draining
	Emitter  *pipeline.Emitter
	Logger   *slog.Logger

	mu   sync.Mutex
	jobs map[string]*DrainStatus
}

// DrainRequest is the control verb "tier-drain" (and "tier-drain-status").
type DrainRequest struct {
	Tier string `json:"tier"`
}

// DrainStatus is the progress of one drain.
type DrainStatus struct {
	Tier     string    `json:"tier"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	Done     bool      `json:"done"`
	// Scanned counts objects with a good copy on the tier; Needing those
	// with fewer than Copies good copies elsewhere; Copied the copies made,
	// Bytes their packed size.
	Scanned int    `json:"scanned"`
	Needing int    `json:"needing"`
	Copied  int    `json:"copied"`
	Bytes   int64  `json:"bytes"`
	Copies  int    `json:"copies"`
	Failed  []Fail `json:"failed,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Fail is an object a drain could not give enough copies.
type Fail struct {
	ObjectID string `json:"object_id"`
	Reason   string `json:"reason"`
}

// Handlers are the drain's control verbs.
func (d *Drainer) Handlers(ctx context.Context) map[string]pipeline.ControlHandler {
	return map[string]pipeline.ControlHandler{
		"tier-drain": pipeline.Verb("tier-drain", func(_ context.Context, req DrainRequest) (any, error) {
			return d.Start(ctx, req.Tier)
		}),
		"tier-drain-status": pipeline.Verb("tier-drain-status", func(_ context.Context, req DrainRequest) (any, error) {
			d.mu.Lock()
			defer d.mu.Unlock()
			st, ok := d.jobs[req.Tier]
			if !ok {
				return nil, fmt.Errorf("tier-drain-status: no drain of %q since the daemon started", req.Tier)
			}
			return d.copyOf(st), nil
		}),
	}
}

// Start starts draining name (or reports the drain in progress), for as
// long as ctx lives.
func (d *Drainer) Start(ctx context.Context, name string) (DrainStatus, error) {
	if _, ok := d.Targets[name]; !ok {
		return DrainStatus{}, fmt.Errorf("tier drain: %q is not a tier of this host (tiers: %s)", name, strings.Join(slices.Sorted(maps.Keys(d.Targets)), ", "))
	}
	if n := len(d.countingBut(name)); n < d.Copies {
		return DrainStatus{}, fmt.Errorf("tier drain: without %s, %d tier(s) count towards release.copies = %d: add a tier (or lower release.copies) first", name, n, d.Copies)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.jobs == nil {
		d.jobs = map[string]*DrainStatus{}
	}
	if st, ok := d.jobs[name]; ok && !st.Done {
		return d.copyOf(st), nil
	}
	st := &DrainStatus{Tier: name, Started: time.Now(), Copies: d.Copies}
	d.jobs[name] = st
	d.Draining.Add(name)
	d.Logger.Info("draining tier: its copies no longer count towards release.copies", "tier", name)
	go d.run(ctx, st)
	return d.copyOf(st), nil
}

func (d *Drainer) copyOf(st *DrainStatus) DrainStatus {
	c := *st
	c.Failed = slices.Clone(st.Failed)
	return c
}

// countingBut lists the configured tiers other than name whose copies
// count.
func (d *Drainer) countingBut(name string) []string {
	var out []string
	for t := range d.Targets {
		if t != name && (len(d.Counting) == 0 || slices.Contains(d.Counting, t)) {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// need is an object that depends on the drained tier.
type need struct {
	id   string
	good map[string]bool // tiers with a good copy
	n    int             // copies still to make
}

func (d *Drainer) run(ctx context.Context, st *DrainStatus) {
	counting := d.countingBut(st.Tier)
	update := func(fn func()) {
		d.mu.Lock()
		defer d.mu.Unlock()
		fn()
	}
	var needs []need
	scanned := 0
	err := eachObjectCopies(d.Catalog, func(id string, good map[string]bool) error {
		if !good[st.Tier] {
			return nil
		}
		scanned++
		have := 0
		for _, t := range counting {
			if good[t] {
				have++
			}
		}
		if have < d.Copies {
			needs = append(needs, need{id: id, good: good, n: d.Copies - have})
		}
		return ctx.Err()
	})
	update(func() { st.Scanned, st.Needing = scanned, len(needs) })
	for _, nd := range needs {
		if err != nil {
			break
		}
		if err = ctx.Err(); err != nil {
			break
		}
		copied, bytes, ferr := d.copyElsewhere(ctx, nd, counting)
		update(func() {
			st.Copied += copied
			st.Bytes += bytes
			if ferr != nil {
				st.Failed = append(st.Failed, Fail{ObjectID: nd.id, Reason: ferr.Error()})
			}
		})
	}
	update(func() {
		st.Done, st.Finished = true, time.Now()
		if err != nil {
			st.Error = err.Error()
		}
	})
	d.Logger.Info("tier drain finished", "tier", st.Tier, "scanned", st.Scanned, "needing", st.Needing, "copied", st.Copied, "failed", len(st.Failed), "err", err)
}

// copyElsewhere makes nd.n good copies of nd's object on counting tiers
// that lack one and want the object, and publishes them.
func (d *Drainer) copyElsewhere(ctx context.Context, nd need, counting []string) (copied int, bytes int64, err error) {
	obj, err := d.Catalog.Object(nd.id)
	if err != nil {
		return 0, 0, fmt.Errorf("catalog: %w", err)
	}
	files, err := d.Catalog.FilesByObject(nd.id)
	if err != nil {
		return 0, 0, fmt.Errorf("catalog: %w", err)
	}
	var errs []error
	for _, t := range counting {
		if copied == nd.n {
			return copied, bytes, nil
		}
		if nd.good[t] || !d.wants(t, files, obj.Size) {
			continue
		}
		ev, from, err := d.Copier.CopyTo(ctx, nd.id, obj.Size, d.Targets[t])
		if err == nil {
			_, err = d.Emitter.Emit(ctx, ev, nd.id, t, ev.PackedSum, "drain")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("to %s: %w", t, err))
			continue
		}
		d.Logger.Info("tier drain: copied", "object", nd.id, "to", t, "from", from)
		copied++
		bytes += ev.PackedSize
	}
	if copied < nd.n {
		errs = append(errs, fmt.Errorf("%d of %d copies made (no other counting tier wants it or lacks it)", copied, nd.n))
		return copied, bytes, errors.Join(errs...)
	}
	return copied, bytes, nil
}

// wants reports whether tier t's filter takes the object under one of
// the paths it was archived from.
func (d *Drainer) wants(t string, files []catalog.File, size int64) bool {
	f := d.Filters[t]
	if f == nil {
		return true
	}
	for _, file := range files {
		if f.Wants(tier.RelPath(d.Roots, file.Path), size) {
			return true
		}
	}
	return false
}

// eachObjectCopies calls fn for every object with copies, with the set of
// tiers that hold a good copy of it.
func eachObjectCopies(cat *catalog.Catalog, fn func(id string, good map[string]bool) error) error {
	var cur string
	good := map[string]bool{}
	flush := func() error {
		if cur == "" {
			return nil
		}
		return fn(cur, good)
	}
	_, err := cat.Scan(catalog.ScanFuncs{Copy: func(c *catalog.Copy) error {
		if c.ObjectID != cur {
			if err := flush(); err != nil {
				return err
			}
			cur, good = c.ObjectID, map[string]bool{}
		}
		if c.State == catalog.CopyGood {
			good[c.Tier] = true
		}
		return nil
	}})
	if err != nil {
		return err
	}
	return flush()
}

// Dependents counts, for each tier that holds good copies in the catalog
// but is not configured, the objects that have fewer than copies good
// copies on the configured tiers whose copies count: they depend on a tier
// the daemon no longer reaches (it was removed from the configuration
// without a drain).
func Dependents(cat *catalog.Catalog, configured, counting []string, copies int) (map[string]int, error) {
	out := map[string]int{}
	err := eachObjectCopies(cat, func(_ string, good map[string]bool) error {
		have := 0
		var gone []string
		for t := range good {
			switch {
			case !slices.Contains(configured, t):
				gone = append(gone, t)
			case len(counting) == 0 || slices.Contains(counting, t):
				have++
			}
		}
		if have < copies {
			for _, t := range gone {
				out[t]++
			}
		}
		return nil
	})
	return out, err
}
