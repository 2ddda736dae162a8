// Package scrubber re-reads stored copies of objects and checks them
// against their recorded size and BLAKE3 (tier.Target.Verify reads
// every byte), publishes object.verified or object.corrupt for each, and
// re-creates a corrupt or missing copy from a good copy on another tier,
// publishing object.stored for the new copy.
//
// A run works on a list of copies fixed at its start (the catalog's copies
// on this host's tiers, optionally one tier, optionally a random sample),
// one copy at a time, and paces its reads to a byte rate so that a scrub
// never starves recalls and archives of bandwidth. An unreachable tier is
// counted, not marked corrupt: nothing is known about its copies.
package scrubber

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tier"
)

// Copy is one stored copy as the catalog knows it.
type Copy struct {
	ObjectID   string
	Tier       string
	Size       int64 // uncompressed bytes
	PackedSize int64
	PackedSum  string
	Corrupt    bool // the catalog marks it corrupt
}

// Config configures one run.
type Config struct {
	// Targets are this host's tiers by name.
	Targets map[string]tier.Target
	// Copies lists the copies known to the catalog (fn is called for each).
	Copies func(fn func(Copy) error) error
	// Repair re-creates the copy of objectID on to from a good copy
	// elsewhere (recall.Reader.Repair).
	Repair func(ctx context.Context, objectID string, to tier.Target) (from, location string, err error)
	// Emit publishes an event with a deterministic id built from parts.
	Emit func(ctx context.Context, ev events.Event, idParts ...string) error
	// Tier limits the run to one tier ("" all of Targets).
	Tier string
	// Sample is the fraction of copies re-read, in (0, 1] (default 1).
	Sample float64
	// Rate bounds the bytes read per second (0: unbounded).
	Rate int64
	// RunID makes the events of this run distinct from other runs', and
	// seeds the sample.
	RunID string
	// Progress, if set, is called after each copy with the totals so far.
	Progress func(Result)
	Logger   *slog.Logger
	// Failpoints: crash tests arm the scrub failpoints.
	Failpoints failpoint.Set
}

// Failpoints of a scrub, in the order a bad copy reaches them.
var (
	FailAfterVerify  = failpoint.Define("scrub.after-verify", "a good copy re-read, object.verified not yet published")
	FailAfterCorrupt = failpoint.Define("scrub.after-corrupt", "object.corrupt published, the copy not yet repaired")
	FailAfterRepair  = failpoint.Define("scrub.after-repair", "the copy re-created on its tier from a good one, object.stored not yet published")
)

// Result counts what a run did.
type Result struct {
	RunID       string    `json:"run_id"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished,omitzero"`
	Total       int       `json:"total"`       // copies to check
	TotalBytes  int64     `json:"total_bytes"` // their packed bytes
	Checked     int       `json:"checked"`
	Bytes       int64     `json:"bytes"`
	Verified    int       `json:"verified"`
	Corrupt     int       `json:"corrupt"` // corrupt or missing
	Missing     int       `json:"missing"` // of Corrupt: not found on the tier
	Repaired    int       `json:"repaired"`
	Unavailable int       `json:"unavailable"` // tier unreachable: not judged
	Failures    []string  `json:"failures,omitempty"`
}

// Validate checks cfg.
func (c *Config) Validate() error {
	switch {
	case len(c.Targets) == 0:
		return errors.New("scrub: no tiers")
	case c.Copies == nil || c.Repair == nil || c.Emit == nil || c.Logger == nil:
		return errors.New("scrub: Copies, Repair, Emit and Logger are required")
	case c.Sample < 0 || c.Sample > 1:
		return fmt.Errorf("scrub: sample %v: want (0, 1]", c.Sample)
	case c.Rate < 0:
		return fmt.Errorf("scrub: rate %d: negative", c.Rate)
	case c.RunID == "":
		return errors.New("scrub: RunID is required")
	}
	if c.Tier != "" {
		if _, ok := c.Targets[c.Tier]; !ok {
			return fmt.Errorf("scrub: tier %q is not configured on this host", c.Tier)
		}
	}
	return nil
}

// Run scrubs the selected copies. It returns the result so far and
// ctx.Err() when ctx ends first.
func Run(ctx context.Context, cfg Config) (Result, error) {
	res := Result{RunID: cfg.RunID, Started: time.Now()}
	if cfg.Sample == 0 {
		cfg.Sample = 1
	}
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	seed := maphash.MakeSeed()
	var todo []Copy
	err := cfg.Copies(func(c Copy) error {
		if _, ok := cfg.Targets[c.Tier]; !ok || cfg.Tier != "" && c.Tier != cfg.Tier {
			return nil
		}
		if cfg.Sample < 1 {
			h := maphash.String(seed, c.ObjectID+"/"+c.Tier)
			if float64(h>>11)/float64(1<<53) >= cfg.Sample {
				return nil
			}
		}
		todo = append(todo, c)
		res.TotalBytes += c.PackedSize
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("scrub: list copies: %w", err)
	}
	res.Total = len(todo)
	report := func() {
		if cfg.Progress != nil {
			cfg.Progress(res)
		}
	}
	report()
	start := time.Now()
	for _, c := range todo {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := pace(ctx, start, res.Bytes, cfg.Rate); err != nil {
			return res, err
		}
		if err := scrubOne(ctx, cfg, c, &res); err != nil {
			return res, err
		}
		res.Checked++
		res.Bytes += c.PackedSize
		report()
	}
	res.Finished = time.Now()
	report()
	return res, nil
}

// pace waits until reading done bytes since start keeps to rate.
func pace(ctx context.Context, start time.Time, done, rate int64) error {
	if rate <= 0 {
		return nil
	}
	wait := time.Until(start.Add(time.Duration(float64(done) / float64(rate) * float64(time.Second))))
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// scrubOne checks one copy; only a cancelled ctx is returned as an error.
func scrubOne(ctx context.Context, cfg Config, c Copy, res *Result) error {
	t := cfg.Targets[c.Tier]
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf("%s on %s: ", c.ObjectID, c.Tier) + fmt.Sprintf(format, args...)
		res.Failures = append(res.Failures, msg)
		cfg.Logger.Warn("scrub: " + msg)
	}
	_, err := t.Verify(ctx, c.ObjectID)
	switch {
	case err == nil:
		res.Verified++
		cfg.Failpoints.Hit(FailAfterVerify)
		if err := cfg.Emit(ctx, &events.ObjectVerified{ObjectID: c.ObjectID, Tier: c.Tier}, c.ObjectID, c.Tier, cfg.RunID); err != nil {
			return stop(ctx, err, func() { fail("publish object.verified: %v", err) })
		}
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, tier.ErrCorrupt), errors.Is(err, tier.ErrNotFound):
	default:
		// Unreachable, or a local error: the copy is not judged.
		res.Unavailable++
		fail("not checked: %v", err)
		return nil
	}
	res.Corrupt++
	if errors.Is(err, tier.ErrNotFound) {
		res.Missing++
	}
	cfg.Logger.Warn("scrub: bad copy", "object", c.ObjectID, "tier", c.Tier, "err", err)
	if perr := cfg.Emit(ctx, &events.ObjectCorrupt{ObjectID: c.ObjectID, Tier: c.Tier, Reason: "scrub: " + err.Error()},
		c.ObjectID, c.Tier, cfg.RunID); perr != nil {
		return stop(ctx, perr, func() { fail("publish object.corrupt: %v", perr) })
	}
	cfg.Failpoints.Hit(FailAfterCorrupt)
	from, loc, rerr := cfg.Repair(ctx, c.ObjectID, t)
	if rerr != nil {
		return stop(ctx, rerr, func() { fail("corrupt (%v), not repaired: %v", err, rerr) })
	}
	cfg.Failpoints.Hit(FailAfterRepair)
	ev, serr := tier.StoredEvent(ctx, t, c.ObjectID, c.Size, loc)
	if serr != nil {
		return stop(ctx, serr, func() { fail("repaired from %s, but: %v", from, serr) })
	}
	if perr := cfg.Emit(ctx, ev, c.ObjectID, c.Tier, ev.PackedSum, "repair", cfg.RunID); perr != nil {
		return stop(ctx, perr, func() { fail("repaired from %s, but object.stored not published: %v", from, perr) })
	}
	res.Repaired++
	cfg.Logger.Info("scrub: repaired", "object", c.ObjectID, "tier", c.Tier, "from", from, "location", loc)
	return nil
}

// stop returns ctx.Err() if ctx ended (the run stops), else records the
// failure and returns nil (the run goes on).
func stop(ctx context.Context, _ error, record func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	record()
	return nil
}

// Jobs tracks scrub runs in a daemon: at most one runs at a time, and the
// last results stay queryable by run id.
type Jobs struct {
	mu    sync.Mutex
	runs  map[string]*job // protected by mu
	order []string        // run ids, oldest first. Protected by mu.
	last  string          // run id of the newest run. Protected by mu.
}

// keepRuns is how many finished runs stay queryable.
const keepRuns = 8

type job struct {
	res  Result
	done bool
	err  string
}

// Status is a run's progress as seen from outside.
type Status struct {
	Result
	Done  bool   `json:"done"`
	Error string `json:"error,omitempty"`
}

// NewJobs returns an empty job table.
func NewJobs() *Jobs { return &Jobs{runs: map[string]*job{}} }

// Start runs cfg in a new goroutine under ctx unless a run is in progress,
// and returns the id of the run that is now in progress (cfg's or the
// earlier one) and whether it is new.
func (j *Jobs) Start(ctx context.Context, cfg Config) (string, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if r, ok := j.runs[j.last]; ok && !r.done {
		return j.last, false
	}
	jb := &job{res: Result{RunID: cfg.RunID, Started: time.Now()}}
	j.runs[cfg.RunID] = jb
	j.last = cfg.RunID
	j.order = append(j.order, cfg.RunID)
	for len(j.order) > keepRuns {
		delete(j.runs, j.order[0])
		j.order = j.order[1:]
	}
	prog := cfg.Progress
	cfg.Progress = func(r Result) {
		j.mu.Lock()
		jb.res = r
		j.mu.Unlock()
		if prog != nil {
			prog(r)
		}
	}
	go func() {
		res, err := Run(ctx, cfg)
		j.mu.Lock()
		defer j.mu.Unlock()
		jb.res, jb.done = res, true
		if err != nil {
			jb.err = err.Error()
		}
	}()
	return cfg.RunID, true
}

// Status returns the state of run id ("" the newest), and false if unknown.
func (j *Jobs) Status(id string) (Status, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if id == "" {
		id = j.last
	}
	r, ok := j.runs[id]
	if !ok {
		return Status{}, false
	}
	return Status{Result: r.res, Done: r.done, Error: r.err}, true
}
