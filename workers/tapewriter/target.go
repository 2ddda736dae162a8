package tapewriter

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	tapevolume "github.com/strata-hsm/strata/workers/tape/volume"
	"github.com/strata-hsm/strata/workers/tier"
)

// Target returns the read side of the tier, for recall and scrub. Reads
// are queued to the drive goroutine, collected for RecallWindow, grouped
// by volume and read in tape order (see package tape/recall): a batch of
// recalls costs one pass over each volume, not a seek per request.
// Positions, sizes and sums come from the catalog (TierDeps.Copy); every
// byte comes from the tape.
func (t *Tier) Target() tier.Target { return &target{t: t} }

type target struct{ t *Tier }

var _ tier.Target = (*target)(nil)

func (g *target) Name() string { return g.t.cfg.Name }
func (g *target) Kind() string { return events.TierTape }

// Put is not supported: objects reach tape through the tier's stage,
// bundled with others.
func (g *target) Put(context.Context, tier.Object) (string, error) {
	return "", fmt.Errorf("tape tier %s: put: %w; objects reach tape through the tape stage", g.t.cfg.Name, ErrNotSupported)
}

// Delete is not supported: tape space is reclaimed by recycling volumes.
func (g *target) Delete(context.Context, string) error {
	return fmt.Errorf("tape tier %s: delete: %w; tape space is reclaimed by relabelling whole volumes", g.t.cfg.Name, ErrNotSupported)
}

func (g *target) copyOf(id string) (TapeCopy, error) {
	if err := tier.ValidateID(id); err != nil {
		return TapeCopy{}, err
	}
	c, ok, err := g.t.deps.Copy(id)
	if err != nil {
		return TapeCopy{}, fmt.Errorf("tape tier %s: catalog: %w: %w", g.t.cfg.Name, tier.ErrUnavailable, err)
	}
	if !ok {
		return TapeCopy{}, fmt.Errorf("tape tier %s: object %s: %w", g.t.cfg.Name, id, tier.ErrNotFound)
	}
	return c, nil
}

// Stat answers from the catalog (no tape movement).
func (g *target) Stat(_ context.Context, id string) (tier.Info, error) {
	c, err := g.copyOf(id)
	if err != nil {
		return tier.Info{}, err
	}
	return tier.Info{ID: id, PackedSize: c.PackedSize, PackedSum: c.PackedSum}, nil
}

// GetRange reads n bytes at off of the packed object from tape, reading
// only the blocks that hold them. The bytes are verified by the caller
// (per frame); a read error of the medium is ErrCorrupt.
func (g *target) GetRange(ctx context.Context, id string, off, n int64) (io.ReadCloser, error) {
	c, err := g.copyOf(id)
	if err != nil {
		return nil, err
	}
	if off < 0 || n < 0 || off > c.PackedSize || n > c.PackedSize-off {
		return nil, fmt.Errorf("tape tier %s: object %s: bytes [%d, %d) of %d: %w", g.t.cfg.Name, id, off, off+n, c.PackedSize, tier.ErrRange)
	}
	if n == 0 {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	res, err := g.t.read(ctx, &readReq{id: id, pos: c.Pos, off: off, n: n})
	if err != nil {
		return nil, err
	}
	return res.rc, nil
}

// Manifest reads the manifest recorded beside the object in its bundle.
func (g *target) Manifest(ctx context.Context, id string) ([]byte, error) {
	c, err := g.copyOf(id)
	if err != nil {
		return nil, err
	}
	res, err := g.t.read(ctx, &readReq{id: id, pos: c.Pos, header: true})
	if err != nil {
		return nil, err
	}
	return res.header.Manifest, nil
}

// Verify reads the whole object from tape and checks its size and BLAKE3
// against the catalog's record and the bundle's PAX records.
func (g *target) Verify(ctx context.Context, id string) (tier.Info, error) {
	c, err := g.copyOf(id)
	if err != nil {
		return tier.Info{}, err
	}
	info := tier.Info{ID: id, PackedSize: c.PackedSize, PackedSum: c.PackedSum}
	hres, err := g.t.read(ctx, &readReq{id: id, pos: c.Pos, header: true})
	if err != nil {
		return info, err
	}
	if hres.header.PackedSize != c.PackedSize || hres.header.PackedSum != c.PackedSum {
		return info, fmt.Errorf("tape tier %s: object %s: tape records %d bytes %s, catalog %d %s: %w", g.t.cfg.Name, id,
			hres.header.PackedSize, hres.header.PackedSum, c.PackedSize, c.PackedSum, tier.ErrCorrupt)
	}
	h := blake3.New()
	if _, err := g.t.read(ctx, &readReq{id: id, pos: c.Pos, off: 0, n: c.PackedSize, w: h}); err != nil {
		return info, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != c.PackedSum {
		return info, fmt.Errorf("tape tier %s: object %s: BLAKE3 %s, want %s: %w", g.t.cfg.Name, id, got, c.PackedSum, tier.ErrCorrupt)
	}
	return info, nil
}

// List reads every volume of the pool from end to end (volume.Scan: every
// byte read and hashed) and reports each object whose hashes check. It is
// slow by nature: hours per full cartridge.
func (g *target) List(ctx context.Context, fn func(tier.Info) error) error {
	r := &listReq{res: make(chan listResult, 1)}
	if err := g.t.send(ctx, r); err != nil {
		return err
	}
	var res listResult
	select {
	case res = <-r.res:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.t.done:
		return ErrTierClosed
	}
	if res.err != nil {
		return res.err
	}
	for _, in := range res.infos {
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// readReq is one read for the drive goroutine: a range of a packed object
// (into w, or a buffer returned as rc), or its header (manifest, size,
// sum).
type readReq struct {
	id     string
	pos    events.TapePosition
	header bool
	off, n int64
	w      io.Writer // nil: buffer into readResult.rc
	res    chan readResult
}

type readResult struct {
	rc     io.ReadCloser
	header bundle.ObjectHeader
	err    error
}

type listReq struct{ res chan listResult }

type listResult struct {
	infos []tier.Info
	err   error
}

// read queues r and waits for it.
func (t *Tier) read(ctx context.Context, r *readReq) (readResult, error) {
	r.res = make(chan readResult, 1)
	if err := t.send(ctx, r); err != nil {
		return readResult{}, err
	}
	select {
	case res := <-r.res:
		if res.err != nil {
			return res, res.err
		}
		return res, nil
	case <-ctx.Done():
		go func() {
			if res := <-r.res; res.rc != nil {
				res.rc.Close()
			}
		}()
		return readResult{}, ctx.Err()
	case <-t.done:
		return readResult{}, ErrTierClosed
	}
}

// serveReads reads a batch: grouped by volume (in the order of their
// first request), each group in tape order.
func (t *Tier) serveReads(ctx context.Context, reads []*readReq) {
	var order []string
	groups := map[string][]*readReq{}
	for _, r := range reads {
		v := r.pos.Volume
		if _, ok := groups[v]; !ok {
			order = append(order, v)
		}
		groups[v] = append(groups[v], r)
	}
	for _, v := range order {
		t.serveVolume(ctx, v, groups[v])
	}
}

func (t *Tier) serveVolume(ctx context.Context, vol string, reads []*readReq) {
	fail := func(err error) {
		for _, r := range reads {
			r.res <- readResult{err: err}
		}
	}
	d, err := t.dev.Mount(ctx, vol)
	if err != nil {
		fail(fmt.Errorf("tape tier %s: mount %s: %w: %w", t.cfg.Name, vol, tier.ErrUnavailable, err))
		return
	}
	l, err := bundle.ReadLabel(d)
	if err == nil && l.Volume != vol {
		err = fmt.Errorf("the drive holds volume %q: %w", l.Volume, tape.ErrWrongVolume)
	}
	if err != nil {
		fail(fmt.Errorf("tape tier %s: volume %s: %w: %w", t.cfg.Name, vol, tier.ErrUnavailable, err))
		return
	}
	bs := int64(l.BlockSize)
	key := func(r *readReq) int64 {
		// Logical block × block size + offset: tape order within a volume.
		return r.pos.Block*bs + r.pos.Offset + r.off
	}
	slices.SortStableFunc(reads, func(a, b *readReq) int {
		return cmp.Or(cmp.Compare(a.pos.TapeFile, b.pos.TapeFile), cmp.Compare(key(a), key(b)))
	})
	rr := bundle.NewRangeReader(d, l.BlockSize)
	for _, r := range reads {
		r.res <- t.serveOne(rr, r)
	}
}

func (t *Tier) serveOne(rr *bundle.RangeReader, r *readReq) readResult {
	classify := func(err error) error {
		kind := tier.ErrUnavailable
		if errors.Is(err, bundle.ErrFormat) || errors.Is(err, bundle.ErrChecksum) || errors.Is(err, tape.ErrMedium) ||
			errors.Is(err, tape.ErrEndOfData) || errors.Is(err, tape.ErrShortBuffer) || errors.Is(err, io.ErrUnexpectedEOF) {
			kind = tier.ErrCorrupt
		}
		return fmt.Errorf("tape tier %s: object %s at %s block %d: %w: %w", t.cfg.Name, r.id, Location(r.pos), r.pos.Block, kind, err)
	}
	if r.header {
		h, err := rr.ReadObjectHeader(r.pos, r.id)
		if err != nil {
			return readResult{err: classify(err)}
		}
		return readResult{header: h}
	}
	if r.w != nil {
		if err := rr.ReadRange(r.pos, r.off, r.n, r.w); err != nil {
			return readResult{err: classify(err)}
		}
		return readResult{}
	}
	if r.n <= spillAbove {
		var buf bytes.Buffer
		buf.Grow(int(r.n))
		if err := rr.ReadRange(r.pos, r.off, r.n, &buf); err != nil {
			return readResult{err: classify(err)}
		}
		return readResult{rc: io.NopCloser(&buf)}
	}
	// Large ranges go through an unlinked file, not RAM.
	f, err := os.CreateTemp(filepath.Join(t.cfg.StateDir, "recall"), "range-*")
	if err != nil {
		return readResult{err: fmt.Errorf("tape tier %s: spill: %w", t.cfg.Name, err)}
	}
	os.Remove(f.Name())
	if err := rr.ReadRange(r.pos, r.off, r.n, f); err != nil {
		f.Close()
		return readResult{err: classify(err)}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return readResult{err: fmt.Errorf("tape tier %s: spill: %w", t.cfg.Name, err)}
	}
	return readResult{rc: f}
}

// list scans every volume of the pool.
func (t *Tier) list(ctx context.Context) listResult {
	vols := t.cfg.Volumes
	if len(vols) == 0 {
		var err error
		if vols, err = t.discover(ctx); err != nil {
			return listResult{err: err}
		}
	}
	var res listResult
	for _, v := range vols {
		d, err := t.dev.Mount(ctx, v)
		if err != nil {
			return listResult{err: fmt.Errorf("tape tier %s: mount %s: %w: %w", t.cfg.Name, v, tier.ErrUnavailable, err)}
		}
		info, err := tapevolume.Scan(d)
		if err != nil {
			return listResult{err: fmt.Errorf("tape tier %s: scan %s: %w: %w", t.cfg.Name, v, tier.ErrUnavailable, err)}
		}
		for _, f := range info.Files {
			for _, o := range f.Objects {
				if o.Err == nil {
					res.infos = append(res.infos, tier.Info{ID: o.ID, PackedSize: o.PackedSize, PackedSum: o.PackedSum})
				}
			}
		}
	}
	return res
}
