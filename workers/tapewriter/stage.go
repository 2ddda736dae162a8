package tapewriter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tier"
)

// The tape store stage (durable "store-<tier>", one per tape tier; see
// Tier.Stage):
//
//	consumes  strata.<host>.object.packed
//	emits     strata.<host>.object.stored   once the object's bundle is closed by a flushing filemark
//
// Objects wait in the writer's RAM ring and are written as one pax tar
// bundle per tape file; a handler returns (and its message is
// acknowledged) only after the bundle holding its object is durable and
// object.stored, with the tape position, is published.

// Stage returns the tier's store stage: it consumes this host's
// object.packed and writes the staged object to tape. A handler returns
// (and its message is acknowledged) only after the object is reported
// stored, that is after a flushing filemark made its bundle durable, and
// object.stored with its tape position is published; so many handlers
// wait at once (Concurrency) while their objects fill a bundle, which is
// closed at BundleBytes, at BundleAge, when Concurrency objects wait, or
// when a recall needs the drive.
// Failpoints of writing to tape, in the order an object reaches them.
var (
	FailBeforeFilemark = failpoint.Define("tape.before-filemark", "the bundle's blocks are written, its flushing filemark not (nothing durable on tape)")
	FailAfterFilemark  = failpoint.Define("tape.after-filemark", "a flushing filemark made the bundle durable; its objects not reported, object.stored not published")
	FailAfterPublish   = failpoint.Define("tape.after-publish", "object.stored (tape position) published, message not yet acked")
)

func (t *Tier) Stage() pipeline.Stage {
	return pipeline.Stage{
		Name:        tier.StageName(t.cfg.Name),
		Filter:      []string{events.Subject(t.deps.Emitter.Host(), events.KindObjectPacked)},
		Concurrency: t.cfg.Concurrency,
		Handle:      pipeline.Handle(tier.StageName(t.cfg.Name), t.handle),
	}
}

func (t *Tier) handle(ctx context.Context, env events.Envelope, p *events.ObjectPacked) error {
	c, have, err := t.lookup(p.ObjectID)
	if err != nil {
		return fmt.Errorf("tape store %s: %w", p.ObjectID, err)
	}
	if have && c.PackedSum == p.PackedSum {
		// Already on tape (a redelivery, or another file with this
		// content): publish again (deduplicated by id) and go on.
		return t.emitStored(ctx, p, c.Pos)
	}
	manifest, err := os.ReadFile(strings.TrimSuffix(p.Staging, ".zst") + ".json")
	if err == nil {
		_, err = os.Stat(p.Staging)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return pipeline.Permanent(fmt.Errorf("tape store %s on %s: staged object is gone and the catalog lists no tape copy of it", p.ObjectID, t.cfg.Name))
	}
	if err != nil {
		return fmt.Errorf("tape store %s: read staged object: %w", p.ObjectID, err)
	}
	staging := p.Staging
	r := &addReq{res: make(chan addResult, 1), obj: Object{
		ID: p.ObjectID, Manifest: manifest, PackedSize: p.PackedSize, PackedSum: p.PackedSum,
		Open: func() (io.ReadCloser, error) { return os.Open(staging) },
	}}
	if err := t.send(ctx, r); err != nil {
		return err
	}
	var res addResult
	select {
	case res = <-r.res:
	case <-ctx.Done():
		return ctx.Err()
	case <-t.done:
		return ErrTierClosed
	}
	if res.err != nil {
		err := fmt.Errorf("tape store %s on %s: %w", p.ObjectID, t.cfg.Name, res.err)
		if res.permanent {
			return pipeline.Permanent(err)
		}
		return err
	}
	if err := t.emitStored(ctx, p, res.pos); err != nil {
		return err
	}
	t.deps.Failpoints.Hit(FailAfterPublish)
	return nil
}

// Location is the human-readable location of a tape copy: "volume/file".
func Location(pos events.TapePosition) string {
	return fmt.Sprintf("%s/%d", pos.Volume, pos.TapeFile)
}

// emitStored publishes the copy at pos; the id names that copy, so a copy
// rewritten elsewhere on tape (after it was found corrupt) is recorded
// anew, while a redelivery publishes nothing new.
func (t *Tier) emitStored(ctx context.Context, p *events.ObjectPacked, pos events.TapePosition) error {
	_, err := t.deps.Emitter.Emit(ctx, &events.ObjectStored{
		ObjectID: p.ObjectID, Tier: t.cfg.Name, TierKind: events.TierTape, Location: Location(pos),
		Size: p.Size, PackedSize: p.PackedSize, PackedSum: p.PackedSum, Tape: &pos,
	}, p.ObjectID, t.cfg.Name, p.PackedSum, Location(pos))
	if err == nil {
		t.log.Debug("stored", "object", p.ObjectID, "volume", pos.Volume, "tape_file", pos.TapeFile, "block", pos.Block)
	}
	return err
}
