package store

import (
	"context"
	"fmt"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/tier"
)

// Record is an object copy found on a tier's media (a tape bundle, a
// directory tier's manifests): what republishing its object.stored needs
// when the catalog or the log lost it (`strata tape rebuild`).
type Record struct {
	ObjectID   string               `json:"object_id"`
	Manifest   []byte               `json:"manifest"`
	PackedSize int64                `json:"packed_size"`
	PackedSum  string               `json:"packed_sum"`
	Location   string               `json:"location"`
	Tape       *events.TapePosition `json:"tape,omitempty"`
}

// StoredEvent is the object.stored event that records r's copy on tier
// name of kind. The manifest must describe the object.
func StoredEvent(name, kind string, r Record) (*events.ObjectStored, error) {
	m, err := object.DecodeManifest(r.Manifest)
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", r.ObjectID, err)
	}
	if m.ObjectID != r.ObjectID {
		return nil, fmt.Errorf("object %s: its manifest describes object %s", r.ObjectID, m.ObjectID)
	}
	ev := &events.ObjectStored{ObjectID: r.ObjectID, Tier: name, TierKind: kind, Location: r.Location,
		Size: m.Size, PackedSize: r.PackedSize, PackedSum: r.PackedSum, Tape: r.Tape}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("object %s: %w", r.ObjectID, err)
	}
	return ev, nil
}

// PublishRecords publishes object.stored for every record, with the ids
// of the store stages (object, tier, packed sum): a copy the log already
// knows is dropped as a duplicate. It returns the number published and
// the records it skipped, with why.
func PublishRecords(ctx context.Context, em *pipeline.Emitter, name, kind string, recs []Record) (int, []string, error) {
	n := 0
	var skipped []string
	for _, r := range recs {
		ev, err := StoredEvent(name, kind, r)
		if err != nil {
			skipped = append(skipped, err.Error())
			continue
		}
		if _, err := em.Emit(ctx, ev, r.ObjectID, name, r.PackedSum); err != nil {
			return n, skipped, err
		}
		n++
	}
	return n, skipped, nil
}

// locator is a target that can say where an object's copy lives (the
// directory tier: its path).
type locator interface {
	Location(id string) string
}

// location names where tg keeps object id: its own words when it can say
// (a directory tier: the path), else tier:key.
func location(tg tier.Target, id string) string {
	if l, ok := tier.As[locator](tg); ok {
		return l.Location(id)
	}
	return tg.Name() + ":" + tier.ObjectKey(id)
}

// TargetRecords lists every object of tg and verifies each (a whole read,
// BLAKE3 checked) and returns the records of the good ones, and why the
// others were skipped. progress, if set, is told how many of the listed
// objects were read.
func TargetRecords(ctx context.Context, tg tier.Target, progress func(done, total int)) ([]Record, []string, error) {
	var ids []string
	if err := tg.List(ctx, func(in tier.Info) error { ids = append(ids, in.ID); return nil }); err != nil {
		return nil, nil, err
	}
	var recs []Record
	var bad []string
	for i, id := range ids {
		if progress != nil {
			progress(i, len(ids))
		}
		info, err := tg.Verify(ctx, id)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		m, err := tg.Manifest(ctx, id)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		recs = append(recs, Record{ObjectID: id, Manifest: m, PackedSize: info.PackedSize, PackedSum: info.PackedSum, Location: location(tg, id)})
	}
	return recs, bad, nil
}
