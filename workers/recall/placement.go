package recall

import (
	"fmt"

	"github.com/strata-hsm/strata/events"
)

// Placement is where a recall of an object reads it: the copy a Reader
// tries first (bulk recalls are ordered by it, `strata recall
// --from-list`).
type Placement struct {
	Tier string
	Cost int
	// Tape is the position of a tape copy (nil for other tiers): volume,
	// tape file, block and offset order the reads of one cartridge.
	Tape *events.TapePosition
}

// Placement returns the copy of objectID that a recall reads first, in
// the order ReadVerified tries them (cost, then a copy that failed
// lately last). It fails with ErrNoCopy when no copy is readable here.
func (r *Reader) Placement(objectID string) (Placement, error) {
	srcs, skipped, err := r.plan(objectID)
	if err != nil {
		return Placement{}, err
	}
	if len(srcs) == 0 {
		return Placement{}, fmt.Errorf("%w of %s readable on this host (copies on %v)", ErrNoCopy, objectID, skipped)
	}
	p := Placement{Tier: srcs[0].tier, Cost: r.cfg.Costs[srcs[0].tier]}
	cps, err := r.cfg.Catalog.Copies(objectID)
	if err != nil {
		return Placement{}, fmt.Errorf("recall %s: list copies: %w", objectID, err)
	}
	for _, c := range cps {
		if c.Tier == p.Tier && c.Tape != nil {
			tp := *c.Tape
			p.Tape = &tp
			break
		}
	}
	return p, nil
}
