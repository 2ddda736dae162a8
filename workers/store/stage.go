// Package store copies packed objects to the cold tiers and removes the
// staged copy once every tier that wants it holds one.
//
// The store stage of a tier (durable "store-<tier>", one per directory, S3
// or rclone tier; tape tiers run workers/tapewriter's stage under the same
// name):
//
//	consumes  strata.<host>.object.packed
//	emits     strata.<host>.object.stored
//
// It copies the staged object to its tier (Target.Put: durable, read back
// and BLAKE3-verified before it returns) and only then publishes
// object.stored, with a deterministic message id (object, tier, packed
// sum): a redelivery after a crash re-verifies and publishes nothing new.
// A tier whose Filter does not want the file acknowledges without a copy.
//
// The unstage stage (durable "unstage", only when some tier has a filter;
// otherwise the releaser removes staged objects):
//
//	consumes  strata.*.object.stored, strata.<host>.object.packed
//	emits     nothing
//
// It removes the staged object once every tier that wants it (by its
// filter, for any path and size the object was packed under) holds a good
// copy in the catalog.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/tier"
)

// Failpoints of the store stage.
var (
	FailAfterPut     = failpoint.Define("store.after-put", "verified Put done, object.stored not yet published")
	FailAfterPublish = failpoint.Define("store.after-publish", "object.stored published, message not yet acked")
)

// StageConfig wires one target to the event log.
type StageConfig struct {
	Target     tier.Target
	Emitter    *pipeline.Emitter
	Failpoints failpoint.Set
	Logger     *slog.Logger
	// Filter is the tier's replication policy; nil: every object. Its
	// patterns match paths relative to Roots (the hot trees).
	Filter *tier.Filter
	Roots  []string
	// Repairer, if set, copies an object whose staged copy is gone from a
	// good copy on another tier (recall.Reader): a tier added after its
	// objects were archived is back-filled as its stage works through the
	// log. Nil: such an object is dead-lettered.
	Repairer repairer
}

// repairer copies an object to a target from a good copy elsewhere.
type repairer interface {
	Repair(ctx context.Context, objectID string, to tier.Target) (from, location string, err error)
}

// Stage returns the store stage of one target: it consumes this host's
// object.packed, copies the staged object to the target (durable and read
// back before Put returns) and publishes object.stored. Each target has its
// own durable consumer, so a slow or failing target never holds up another.
func Stage(cfg StageConfig) pipeline.Stage {
	h := &storeHandler{cfg: cfg}
	return pipeline.Stage{
		Name:        tier.StageName(cfg.Target.Name()),
		Filter:      []string{events.Subject(cfg.Emitter.Host(), events.KindObjectPacked)},
		Concurrency: 4,
		Handle:      pipeline.Handle(tier.StageName(cfg.Target.Name()), h.handleAndReport),
		MaxDeliver:  MaxDeliver,
		Backoff:     Backoff,
	}
}

// The store stages' retry policy: a tier may be down for days, so a copy
// is retried (every 5 minutes at the end) for about two weeks instead of
// being dead-lettered after a few tries. Permanent errors are still
// dead-lettered at once.
var Backoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute}

// MaxDeliver is the store stages' deliveries of one message.
const MaxDeliver = 4000

// handleAndReport is handle, and an object.store_failed when it fails
// (see report).
func (h *storeHandler) handleAndReport(ctx context.Context, env events.Envelope, p *events.ObjectPacked) error {
	err := h.handle(ctx, env, p)
	if err != nil && ctx.Err() == nil {
		h.report(ctx, env, p, err)
	}
	return err
}

// report publishes why the object has no copy on the tier: at the first
// failure, the 2nd, 4th, 8th… and when the stage gives up, so that ls,
// status and archive --wait can say why a file is stuck without an event
// per retry.
func (h *storeHandler) report(ctx context.Context, env events.Envelope, p *events.ObjectPacked, err error) {
	n := max(pipeline.Deliveries(ctx), 1)
	permanent := pipeline.IsPermanent(err) || n >= MaxDeliver
	if !permanent && n&(n-1) != 0 {
		return
	}
	ev := &events.ObjectStoreFailed{ObjectID: p.ObjectID, Tier: h.cfg.Target.Name(), Reason: err.Error(), Attempts: n, Permanent: permanent}
	if !permanent {
		ev.RetryIn = int64(Backoff[min(n, len(Backoff))-1])
	}
	if _, perr := h.cfg.Emitter.Emit(ctx, ev, p.ObjectID, ev.Tier, strconv.FormatUint(env.Seq, 10), strconv.Itoa(n)); perr != nil {
		h.cfg.Logger.Warn("publish object.store_failed", "object", p.ObjectID, "tier", ev.Tier, "err", perr)
	}
}

type storeHandler struct {
	cfg StageConfig
}

func (h *storeHandler) handle(ctx context.Context, env events.Envelope, p *events.ObjectPacked) error {
	if !h.cfg.Filter.Wants(tier.RelPath(h.cfg.Roots, p.Path), p.Size) {
		return nil
	}
	t := h.cfg.Target
	manifestPath := strings.TrimSuffix(p.Staging, ".zst") + ".json"
	manifest, err := os.ReadFile(manifestPath)
	if err == nil {
		_, err = os.Stat(p.Staging)
	}
	var loc string
	packedSize, packedSum := p.PackedSize, p.PackedSum
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Staging was cleaned up after every tier that wanted the object
		// had its copy: a redelivery (the copy is on the target), or a tier
		// added since (the copy is on other tiers).
		info, verr := t.Verify(ctx, p.ObjectID)
		switch {
		case verr == nil && info.PackedSum == p.PackedSum:
			loc = "" // publish with the target's location below
		case errors.Is(verr, tier.ErrUnavailable):
			return verr
		case h.cfg.Repairer == nil && verr != nil:
			return pipeline.Permanent(fmt.Errorf("store %s on %s: staged object is gone and the target has no good copy: %w", p.ObjectID, t.Name(), verr))
		case h.cfg.Repairer == nil:
			return pipeline.Permanent(fmt.Errorf("store %s on %s: staged object is gone and the target holds another packing", p.ObjectID, t.Name()))
		case verr == nil:
			// Another packing of the same content is there, verified: it
			// is a good copy of the object.
			loc, packedSize, packedSum = "", info.PackedSize, info.PackedSum
		default:
			from, rloc, rerr := h.cfg.Repairer.Repair(ctx, p.ObjectID, t)
			if rerr != nil {
				err := backfillError(p.ObjectID, t.Name(), rerr)
				if err == nil {
					h.cfg.Logger.Info("nothing to back-fill: no tier keeps the object any more", "object", p.ObjectID, "tier", t.Name())
				}
				return err
			}
			st, serr := t.Stat(ctx, p.ObjectID)
			if serr != nil {
				return fmt.Errorf("store %s on %s: copied from %s, then: %w", p.ObjectID, t.Name(), from, serr)
			}
			h.cfg.Logger.Info("back-filled a copy from another tier", "object", p.ObjectID, "tier", t.Name(), "from", from)
			loc, packedSize, packedSum = rloc, st.PackedSize, st.PackedSum
		}
	case err != nil:
		return fmt.Errorf("store %s: read staged manifest: %w", p.ObjectID, err)
	default:
		if err := fits(ctx, t, p.PackedSize); err != nil {
			return err
		}
		loc, err = t.Put(ctx, tier.Object{
			ID: p.ObjectID, PackedSize: p.PackedSize, PackedSum: p.PackedSum, Manifest: manifest,
			Open: func() (io.ReadCloser, error) { return os.Open(p.Staging) },
		})
		if err != nil {
			if errors.Is(err, tier.ErrCorrupt) {
				// Either the staged bytes do not match their sum (never
				// store them: give up), or the tier's copy was damaged on
				// the way, up or back (its read-back caught it): retry.
				switch serr := checkStaged(ctx, p); {
				case errors.Is(serr, tier.ErrCorrupt):
					return pipeline.Permanent(fmt.Errorf("store %s on %s: %w (staged copy: %w)", p.ObjectID, t.Name(), err, serr))
				case serr != nil:
					return fmt.Errorf("store %s on %s: %w (staged copy not checked: %w)", p.ObjectID, t.Name(), err, serr)
				}
				return fmt.Errorf("store %s on %s: the tier's copy failed its read-back, the staged copy is good; retrying: %w", p.ObjectID, t.Name(), err)
			}
			return fmt.Errorf("store %s on %s: %w", p.ObjectID, t.Name(), err)
		}
	}
	h.cfg.Failpoints.Hit(FailAfterPut)
	if loc == "" {
		loc = location(t, p.ObjectID)
	}
	// The id names this message's copy: a redelivery publishes nothing new,
	// but a later archive of the same content records the copy again — it
	// may have been found corrupt meanwhile and rewritten by Put, and the
	// catalog must learn it is good (with the same id the stream would
	// drop it, and the file would wait for its copy forever).
	_, err = h.cfg.Emitter.Emit(ctx, &events.ObjectStored{
		ObjectID: p.ObjectID, Tier: t.Name(), TierKind: t.Kind(), Location: loc,
		Size: p.Size, PackedSize: packedSize, PackedSum: packedSum,
	}, p.ObjectID, t.Name(), packedSum, strconv.FormatUint(env.Seq, 10))
	if err == nil {
		h.cfg.Failpoints.Hit(FailAfterPublish)
		h.cfg.Logger.Debug("stored", "object", p.ObjectID, "tier", t.Name(), "location", loc)
	}
	return err
}

// checkStaged reads the staged object and checks it against the size and
// sum the compressor recorded: nil when the staged copy is good.
func checkStaged(ctx context.Context, p *events.ObjectPacked) error {
	f, err := os.Open(p.Staging)
	if err != nil {
		return err
	}
	defer f.Close()
	return tier.Check(ctx, f, p.PackedSize, p.PackedSum)
}

// fits refuses, for good, an object larger than the whole target: every
// retry would fail the same way.
func fits(ctx context.Context, t tier.Target, size int64) error {
	s, ok := tier.As[tier.Sizer](t)
	if !ok {
		return nil
	}
	total, err := s.Capacity(ctx)
	if err != nil || size <= total {
		return nil // unknown: let Put say
	}
	return pipeline.Permanent(fmt.Errorf("%w: %d bytes packed, tier %s holds %d bytes in all: give it more space, or a max_size filter",
		tier.ErrTooLarge, size, t.Name(), total))
}

// backfillError classifies a failed back-fill: nothing to do when the
// catalog lists no copy (the object was pruned), retried while a copy may
// come back (a tier unreachable), permanent when every copy is bad.
func backfillError(id, name string, err error) error {
	var nc *recall.NoCopyError
	if errors.As(err, &nc) {
		if len(nc.Failures) == 0 && len(nc.Skipped) == 0 {
			return nil // no tier keeps the object any more (pruned): nothing to copy
		}
		for _, f := range nc.Failures {
			if errors.Is(f.Err, tier.ErrUnavailable) {
				return fmt.Errorf("store %s on %s: back-fill: %w", id, name, err)
			}
		}
		if len(nc.Skipped) > 0 {
			return fmt.Errorf("store %s on %s: back-fill: only tiers of other hosts have it: %w", id, name, err)
		}
	}
	if errors.Is(err, recall.ErrNoCopy) {
		return pipeline.Permanent(fmt.Errorf("store %s on %s: staged object is gone and no tier has a good copy to copy from: %w", id, name, err))
	}
	return fmt.Errorf("store %s on %s: back-fill: %w", id, name, err)
}
