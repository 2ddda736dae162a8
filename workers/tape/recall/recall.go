// Package recall orders reads from tape: requests are collected for a
// short window, grouped by volume, sorted by position on tape and
// deduplicated, so that one mount serves a whole batch in one pass instead
// of seeking back and forth (a "recall storm").
package recall

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
)

// Request asks for one object known to be on tape.
type Request struct {
	ObjectID   string
	Pos        events.TapePosition
	PackedSize int64
	PackedSum  string
}

// Batch is the requests for one volume, in tape order, each object once.
type Batch struct {
	Volume   string
	Requests []Request
}

// Plan groups reqs by volume (volumes in the order of their first
// request), sorts each group by tape file, block and offset, and drops
// repeated requests for an object.
func Plan(reqs []Request) []Batch {
	var out []Batch
	idx := map[string]int{}
	seen := map[[2]string]bool{}
	for _, r := range reqs {
		k := [2]string{r.Pos.Volume, r.ObjectID}
		if seen[k] {
			continue
		}
		seen[k] = true
		i, ok := idx[r.Pos.Volume]
		if !ok {
			i = len(out)
			idx[r.Pos.Volume] = i
			out = append(out, Batch{Volume: r.Pos.Volume})
		}
		out[i].Requests = append(out[i].Requests, r)
	}
	for _, b := range out {
		slices.SortFunc(b.Requests, func(a, b Request) int {
			return cmp.Or(cmp.Compare(a.Pos.TapeFile, b.Pos.TapeFile), cmp.Compare(a.Pos.Block, b.Pos.Block),
				cmp.Compare(a.Pos.Offset, b.Pos.Offset))
		})
	}
	return out
}

// Collect waits for a first request on in, then gathers more for window
// (or until in is closed or ctx ends) and returns them.
func Collect(ctx context.Context, in <-chan Request, window time.Duration) ([]Request, error) {
	var reqs []Request
	select {
	case r, ok := <-in:
		if !ok {
			return nil, nil
		}
		reqs = append(reqs, r)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	timer := time.NewTimer(window)
	defer timer.Stop()
	for {
		select {
		case r, ok := <-in:
			if !ok {
				return reqs, nil
			}
			reqs = append(reqs, r)
		case <-timer.C:
			return reqs, nil
		case <-ctx.Done():
			return reqs, ctx.Err()
		}
	}
}

// Mounter loads a volume into a drive.
type Mounter interface {
	Mount(ctx context.Context, volume string) (tape.Drive, error)
}

// Run reads one batch: it mounts the volume, checks its label, and reads
// each object in order, verifying its BLAKE3; deliver gets verified bytes
// only. A failed object is passed to deliver with its error (nil bytes)
// and the batch goes on.
func Run(ctx context.Context, m Mounter, b Batch, deliver func(Request, []byte, error) error) error {
	d, err := m.Mount(ctx, b.Volume)
	if err != nil {
		return fmt.Errorf("recall from %s: %w", b.Volume, err)
	}
	l, err := bundle.ReadLabel(d)
	if err != nil {
		return fmt.Errorf("recall from %s: %w", b.Volume, err)
	}
	if l.Volume != b.Volume {
		return fmt.Errorf("recall from %s: cartridge is labelled %q: %w", b.Volume, l.Volume, bundle.ErrFormat)
	}
	rr := bundle.NewRangeReader(d, l.BlockSize)
	for _, r := range b.Requests {
		if err := ctx.Err(); err != nil {
			return err
		}
		var buf bytes.Buffer
		buf.Grow(int(r.PackedSize))
		err := rr.ReadObject(r.Pos, r.PackedSize, r.PackedSum, &buf)
		var data []byte
		if err == nil {
			data = buf.Bytes()
		}
		if err := deliver(r, data, err); err != nil {
			return err
		}
	}
	return nil
}
