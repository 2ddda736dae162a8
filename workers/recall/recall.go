package recall

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier"
)

// Errors callers test with errors.Is.
var (
	// ErrNoCopy: no copy of the object could be read and verified. Errors
	// wrapping it are *NoCopyError values listing why each copy failed.
	ErrNoCopy = errors.New("recall: no good copy")
	// ErrStubMismatch: the stub and the object disagree (the stub's size is
	// not the size the object's manifest records).
	ErrStubMismatch = errors.New("recall: stub and object disagree")
)

// Defaults of Config.
const (
	DefaultManifestCache  = 1024
	DefaultFailureBackoff = 30 * time.Second
	// manifestTimeout bounds one shared manifest fetch, which runs detached
	// from the context of the caller that started it (others may wait).
	manifestTimeout = time.Minute
)

// Copy is a good copy of an object on a tier, in the order of recall.
type Copy struct {
	Tier string // tier name, a key of Config.Targets
	Cost int    // lower is tried first
}

// copyLister is what the Reader asks for an object's copies: the catalog.
// It must be cheap and safe for concurrent use.
type copyLister interface {
	Copies(objectID string) ([]catalog.Copy, error)
}

// Config configures a Reader.
type Config struct {
	// Targets are the tiers this host can read, by tier name.
	Targets map[string]tier.Target
	// Catalog lists the copies of an object; only those it believes good
	// are read. Asked once per ReadVerified, WriteTo, Manifest and Repair
	// call.
	Catalog copyLister
	// Costs orders the copies: lower first (a tier not listed costs 0).
	Costs map[string]int
	// Emitter, if set, publishes object.corrupt for every copy found
	// corrupt or missing, so the catalog stops offering it and scrub
	// repairs it.
	Emitter *pipeline.Emitter
	// OnFailure, if set, is called once per failed attempt to read a copy,
	// with the tier and why (see the package doc for the error classes).
	// It is called synchronously: keep it short and non-blocking.
	OnFailure func(objectID, tier string, err error)
	// Logger receives debug and warning messages. Default: discard.
	Logger *slog.Logger
	// ManifestCache is the number of manifests kept (one per object and
	// tier). Default DefaultManifestCache.
	ManifestCache int
	// FailureBackoff is how long a copy that failed is tried after the
	// others (a whole tier when it was unreachable). Default
	// DefaultFailureBackoff; negative disables it.
	FailureBackoff time.Duration
}

// EnsureDefaults fills zero fields with their defaults.
func (c *Config) EnsureDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.ManifestCache = cmp.Or(c.ManifestCache, DefaultManifestCache)
	c.FailureBackoff = cmp.Or(c.FailureBackoff, DefaultFailureBackoff)
}

// Validate checks c after EnsureDefaults.
func (c *Config) Validate() error {
	switch {
	case len(c.Targets) == 0:
		return pipeline.NewConfigError("targets", len(c.Targets), errors.New("want at least one target"))
	case c.Catalog == nil:
		return pipeline.NewConfigError("catalog", nil, errors.New("required"))
	case c.ManifestCache < 1:
		return pipeline.NewConfigError("manifest_cache", c.ManifestCache, errors.New("want at least 1"))
	}
	for name, t := range c.Targets {
		if t == nil {
			return pipeline.NewConfigError("targets", name, errors.New("nil target"))
		}
	}
	return nil
}

// CopyFailure is why one copy could not serve a read.
type CopyFailure struct {
	Tier string
	Err  error
}

// NoCopyError is returned when no copy of an object could be read and
// verified. errors.Is(err, ErrNoCopy) holds, and errors.Is(err,
// ErrStubMismatch) when a copy's manifest disagreed with the stub.
type NoCopyError struct {
	ObjectID string
	Failures []CopyFailure // the copies tried, in order
	Skipped  []string      // tiers with a copy but no target on this host
}

func (e *NoCopyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "recall: no good copy of object %s", e.ObjectID)
	if len(e.Failures) == 0 && len(e.Skipped) == 0 {
		b.WriteString(": the catalog lists no copy")
	}
	for i, f := range e.Failures {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %v", f.Tier, f.Err)
	}
	if len(e.Skipped) > 0 {
		fmt.Fprintf(&b, " (not readable from this host: %s)", strings.Join(e.Skipped, ", "))
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrNoCopy) true, and ErrStubMismatch when it
// caused a failure.
func (e *NoCopyError) Unwrap() []error {
	errs := []error{ErrNoCopy}
	for _, f := range e.Failures {
		if errors.Is(f.Err, ErrStubMismatch) {
			return append(errs, ErrStubMismatch)
		}
	}
	return errs
}

// Reader reads verified bytes of archived objects from their copies.
type Reader struct {
	cfg       Config
	log       *slog.Logger
	manifests *lru
	fetches   singleflight.Group // manifest fetches, by cache key
	boot      string             // names this Reader's life in object.corrupt ids
	corrupt   atomic.Uint64      // object.corrupt events published

	penalty struct {
		sync.Mutex
		// until maps a tier ("tier") or a copy ("tier\x00id") to the time
		// until which it is tried last. Protected by mu.
		until map[string]time.Time
	}
}

// New checks cfg and returns a Reader.
func New(cfg Config) (*Reader, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := &Reader{cfg: cfg, log: cfg.Logger, manifests: newLRU(cfg.ManifestCache), boot: hex.EncodeToString(b[:])}
	r.penalty.until = make(map[string]time.Time)
	return r, nil
}

// goodCopies lists the copies of id that the catalog believes good, with
// their cost, and those it holds corrupt.
func (r *Reader) goodCopies(id string) (good, bad []Copy, err error) {
	cps, err := r.cfg.Catalog.Copies(id)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return nil, nil, err
	}
	for _, c := range cps {
		switch c.State {
		case catalog.CopyGood:
			good = append(good, Copy{Tier: c.Tier, Cost: r.cfg.Costs[c.Tier]})
		case catalog.CopyCorrupt:
			bad = append(bad, Copy{Tier: c.Tier, Cost: r.cfg.Costs[c.Tier]})
		}
	}
	return good, bad, nil
}

// source is a copy this host can read.
type source struct {
	tier string
	t    tier.Target
}

// plan returns the readable copies of id in the order to try them, and the
// tiers listed by the catalog but not readable here.
func (r *Reader) plan(id string) (srcs []source, skipped []string, err error) {
	if err := tier.ValidateID(id); err != nil {
		return nil, nil, fmt.Errorf("recall: %w", err)
	}
	copies, bad, err := r.goodCopies(id)
	if err != nil {
		return nil, nil, fmt.Errorf("recall %s: list copies: %w", id, err)
	}
	byCost := func(a, b Copy) int {
		return cmp.Or(cmp.Compare(a.Cost, b.Cost), strings.Compare(a.Tier, b.Tier))
	}
	slices.SortStableFunc(copies, byCost)
	slices.SortStableFunc(bad, byCost)
	seen := make(map[string]bool, len(copies))
	var late, last []source
	for _, c := range copies {
		if seen[c.Tier] {
			continue
		}
		seen[c.Tier] = true
		t, ok := r.cfg.Targets[c.Tier]
		if !ok {
			skipped = append(skipped, c.Tier)
			continue
		}
		if r.penalized(c.Tier, id) {
			late = append(late, source{c.Tier, t})
			continue
		}
		srcs = append(srcs, source{c.Tier, t})
	}
	// Copies the catalog holds corrupt come last of all, as a last resort:
	// "corrupt" may mean that one read of a good copy was damaged on the
	// way (a bit flipped in transit), and every byte a copy serves is
	// verified per frame anyway, so trying it can only give right bytes
	// or an error — and otherwise a transient fault on every copy would
	// leave the file unrecallable until a scrub.
	for _, c := range bad {
		if seen[c.Tier] {
			continue
		}
		seen[c.Tier] = true
		if t, ok := r.cfg.Targets[c.Tier]; ok {
			last = append(last, source{c.Tier, t})
		}
	}
	return append(append(srcs, late...), last...), skipped, nil
}

func (r *Reader) penalized(tier, id string) bool {
	if r.cfg.FailureBackoff < 0 {
		return false
	}
	now := time.Now()
	r.penalty.Lock()
	defer r.penalty.Unlock()
	return now.Before(r.penalty.until[tier]) || now.Before(r.penalty.until[tier+"\x00"+id])
}

// maxPenalties bounds the penalty map; expired entries are dropped when it
// is reached, and all entries if that is not enough (they are only hints).
const maxPenalties = 4096

// failed records and reports a failed attempt on a copy.
func (r *Reader) failed(id, tierName string, err error) {
	r.manifests.remove(cacheKey(tierName, id)) // a repaired copy may differ
	r.log.Warn("copy failed", "object", id, "tier", tierName, "err", err)
	if r.cfg.FailureBackoff >= 0 {
		key := tierName + "\x00" + id
		if errors.Is(err, tier.ErrUnavailable) {
			key = tierName
		}
		now := time.Now()
		r.penalty.Lock()
		if len(r.penalty.until) >= maxPenalties {
			for k, t := range r.penalty.until {
				if !now.Before(t) {
					delete(r.penalty.until, k)
				}
			}
			if len(r.penalty.until) >= maxPenalties {
				clear(r.penalty.until)
			}
		}
		r.penalty.until[key] = now.Add(r.cfg.FailureBackoff)
		r.penalty.Unlock()
	}
	if r.cfg.Emitter != nil && (errors.Is(err, tier.ErrCorrupt) || errors.Is(err, tier.ErrNotFound)) {
		// Off the reader's path: a slow log must not hold a recall.
		ev := &events.ObjectCorrupt{ObjectID: id, Tier: tierName, Reason: err.Error()}
		n := strconv.FormatUint(r.corrupt.Add(1), 10)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := r.cfg.Emitter.Emit(ctx, ev, id, tierName, r.boot, n); err != nil {
				r.log.Error("publish object.corrupt", "object", id, "tier", tierName, "err", err)
			}
		}()
	}
	if r.cfg.OnFailure != nil {
		r.cfg.OnFailure(id, tierName, err)
	}
}

// succeeded clears the penalty of a copy that served a read.
func (r *Reader) succeeded(id, tier string) {
	r.penalty.Lock()
	defer r.penalty.Unlock()
	if len(r.penalty.until) > 0 {
		delete(r.penalty.until, tier)
		delete(r.penalty.until, tier+"\x00"+id)
	}
}

func cacheKey(tier, id string) string { return tier + "\x00" + id }

// corrupt wraps err with tier.ErrCorrupt unless it already is.
func corrupt(err error) error {
	if errors.Is(err, tier.ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %w", tier.ErrCorrupt, err)
}

// manifestOf returns the manifest of the copy of id on src, checked: valid,
// and for this object. Concurrent calls for one copy share one fetch.
func (r *Reader) manifestOf(ctx context.Context, src source, id string) (object.Manifest, error) {
	key := cacheKey(src.tier, id)
	if m, ok := r.manifests.get(key); ok {
		return m, nil
	}
	ch := r.fetches.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), manifestTimeout)
		defer cancel()
		b, err := src.t.Manifest(fctx, id)
		if err != nil {
			return object.Manifest{}, fmt.Errorf("manifest: %w", err)
		}
		m, err := object.DecodeManifest(b)
		if err != nil {
			return object.Manifest{}, fmt.Errorf("manifest: %w", corrupt(err))
		}
		if m.ObjectID != id {
			return object.Manifest{}, fmt.Errorf("manifest: %w: it describes object %s", tier.ErrCorrupt, m.ObjectID)
		}
		r.manifests.put(key, m)
		return m, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return object.Manifest{}, res.Err
		}
		return res.Val.(object.Manifest), nil
	case <-ctx.Done():
		return object.Manifest{}, ctx.Err()
	}
}

// Manifest returns the manifest of objectID from the first copy, in the
// order of reads, whose manifest is valid and describes this object.
func (r *Reader) Manifest(ctx context.Context, objectID string) (object.Manifest, error) {
	srcs, skipped, err := r.plan(objectID)
	if err != nil {
		return object.Manifest{}, err
	}
	nc := &NoCopyError{ObjectID: objectID, Skipped: skipped}
	for _, src := range srcs {
		m, err := r.manifestOf(ctx, src, objectID)
		if err == nil {
			return m, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return object.Manifest{}, fmt.Errorf("recall %s: %w", objectID, cerr)
		}
		r.failed(objectID, src.tier, err)
		nc.Failures = append(nc.Failures, CopyFailure{src.tier, err})
	}
	return object.Manifest{}, nc
}

// ReadVerified fills all of p with the bytes [off, off+len(p)) of the
// content of object st.ObjectID, every frame verified, from the best copy
// that can serve them, and returns that copy's tier. On error p is left as
// it was. It satisfies the interceptor's Source interface.
func (r *Reader) ReadVerified(ctx context.Context, st stub.Info, p []byte, off int64) (tier string, err error) {
	id := st.ObjectID
	if off < 0 || st.Size < 0 || int64(len(p)) > st.Size || off > st.Size-int64(len(p)) {
		return "", fmt.Errorf("recall %s: bytes [%d, %d) outside the object's %d bytes", id, off, off+int64(len(p)), st.Size)
	}
	srcs, skipped, err := r.plan(id)
	if err != nil {
		return "", err
	}
	nc := &NoCopyError{ObjectID: id, Skipped: skipped}
	for _, src := range srcs {
		err := r.readCopy(ctx, src, st, p, off)
		if err == nil {
			r.succeeded(id, src.tier)
			return src.tier, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return "", fmt.Errorf("recall %s: %w", id, cerr)
		}
		r.failed(id, src.tier, err)
		nc.Failures = append(nc.Failures, CopyFailure{src.tier, err})
	}
	return "", nc
}

// readCopy reads p at off from one copy; p is written only on success.
func (r *Reader) readCopy(ctx context.Context, src source, st stub.Info, p []byte, off int64) error {
	m, err := r.manifestOf(ctx, src, st.ObjectID)
	if err != nil {
		return err
	}
	if m.Size != st.Size {
		return fmt.Errorf("%w: stub size %d, object size %d", ErrStubMismatch, st.Size, m.Size)
	}
	if len(p) == 0 {
		return nil
	}
	first, _, poff, plen := m.FrameSpan(off, int64(len(p)))
	packed, err := fetch(ctx, src.t, st.ObjectID, poff, plen)
	if err != nil {
		return err
	}
	data, err := object.DecodeFrames(m, first, packed)
	if err != nil {
		return fmt.Errorf("frames at %d: %w", poff, corrupt(err))
	}
	start := off - m.Frames[first].Offset
	if start < 0 || int64(len(data)) < start+int64(len(p)) {
		// Cannot happen with a valid manifest; never hand out a short read.
		return fmt.Errorf("recall: internal error: frames %d.. decode to %d bytes, need [%d, %d)", first, len(data), start, start+int64(len(p)))
	}
	copy(p, data[start:])
	return nil
}

// fetch reads exactly n packed bytes of object id at off from t.
func fetch(ctx context.Context, t tier.Target, id string, off, n int64) ([]byte, error) {
	rc, err := t.GetRange(ctx, id, off, n)
	if err != nil {
		return nil, classifyGet(off, n, err)
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("read %d bytes at %d: %w", n, off, err)
	}
	return buf, nil
}

// classifyGet marks a range the copy does not have (ErrRange: the copy is
// shorter than its manifest says) as corruption.
func classifyGet(off, n int64, err error) error {
	if errors.Is(err, tier.ErrRange) {
		return fmt.Errorf("get %d bytes at %d: %w", n, off, corrupt(err))
	}
	return fmt.Errorf("get %d bytes at %d: %w", n, off, err)
}
