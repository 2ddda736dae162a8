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
	"strings"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tier"
)

// Failpoints of the store stage.
const (
	FailAfterPut     = "store.after-put"     // verified Put done, object.stored not yet published
	FailAfterPublish = "store.after-publish" // object.stored published, message not yet acked
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
		Handle:      pipeline.Handle(tier.StageName(cfg.Target.Name()), h.handle),
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
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Staging was cleaned up after every tier had its copy: this is a
		// redelivery. The copy must already be on the target.
		info, verr := t.Verify(ctx, p.ObjectID)
		if verr != nil {
			if errors.Is(verr, tier.ErrUnavailable) {
				return verr
			}
			return pipeline.Permanent(fmt.Errorf("store %s on %s: staged object is gone and the target has no good copy: %w", p.ObjectID, t.Name(), verr))
		}
		if info.PackedSum != p.PackedSum {
			return pipeline.Permanent(fmt.Errorf("store %s on %s: staged object is gone and the target holds another packing", p.ObjectID, t.Name()))
		}
		loc = "" // fall through to publish with the target's location below
	case err != nil:
		return fmt.Errorf("store %s: read staged manifest: %w", p.ObjectID, err)
	default:
		loc, err = t.Put(ctx, tier.Object{
			ID: p.ObjectID, PackedSize: p.PackedSize, PackedSum: p.PackedSum, Manifest: manifest,
			Open: func() (io.ReadCloser, error) { return os.Open(p.Staging) },
		})
		if err != nil {
			if errors.Is(err, tier.ErrCorrupt) {
				// The staged bytes do not match their sum: never store them.
				return pipeline.Permanent(fmt.Errorf("store %s on %s: %w", p.ObjectID, t.Name(), err))
			}
			return fmt.Errorf("store %s on %s: %w", p.ObjectID, t.Name(), err)
		}
	}
	h.cfg.Failpoints.Hit(FailAfterPut)
	if loc == "" {
		loc = t.Name() + ":" + tier.ObjectKey(p.ObjectID)
	}
	_, err = h.cfg.Emitter.Emit(ctx, &events.ObjectStored{
		ObjectID: p.ObjectID, Tier: t.Name(), TierKind: t.Kind(), Location: loc,
		Size: p.Size, PackedSize: p.PackedSize, PackedSum: p.PackedSum,
	}, p.ObjectID, t.Name(), p.PackedSum)
	if err == nil {
		h.cfg.Failpoints.Hit(FailAfterPublish)
		h.cfg.Logger.Debug("stored", "object", p.ObjectID, "tier", t.Name(), "location", loc)
	}
	return err
}
