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

// Target returns the tier as a tier.Target, for recall, scrub and repair.
// Reads are queued to the drive goroutine, collected for RecallWindow,
// grouped by volume and read in tape order (see package tape/recall): a
// batch of recalls costs one pass over each volume, not a seek per
// request. Positions, sizes and sums come from the catalog (TierDeps.Copy)
// and, for copies Put wrote since the tier was opened, from the session
// index (Tier.lookup); every byte comes from the tape.
//
// Put writes through the same writer as the stage (see Put); Delete is
// refused with tier.ErrNotSupported, as tape space comes back only by
// relabelling whole volumes.
func (t *Tier) Target() tier.Target { return &target{t: t} }

type target struct{ t *Tier }

var _ tier.Target = (*target)(nil)

func (g *target) Name() string { return g.t.cfg.Name }
func (g *target) Kind() string { return events.TierTape }

// Put writes o to tape the way the stage writes objects: through the
// tier's writer into the open bundle, which is then closed at once with a
// flushing filemark (a Put is a repair whose caller waits; the stage's
// objects in that bundle are reported stored with it). Then it reads the
// copy back from tape — the manifest member (equal to o.Manifest), the PAX
// size and sum, and every byte against o.PackedSum — and only then returns
// its location, "volume/tape_file".
//
// The source (for a repair, another tier: perhaps a slow remote) is first
// copied to an unlinked file under StateDir and checked against
// o.PackedSize and o.PackedSum, on the caller's goroutine: the drive never
// waits for a slow source, and bytes that are wrong, short, long, or cut
// off by an error or a cancelled ctx never reach the tape, where they
// could not be removed.
//
// A copy with the same packed bytes already on tape is read back the same
// way and, when it is good and carries the same manifest, nothing is
// written. Otherwise (no copy, a damaged one, another packing or another
// manifest: a bundle cannot be changed in place) the object is written
// again, and the new copy is the one Stat, GetRange, Manifest and Verify
// use from then on; the old bytes stay on tape until the volume is
// relabelled. Bytes that do not match o.PackedSize and o.PackedSum are
// ErrCorrupt, and nothing is written or recorded.
//
// The new copy's position goes into the tier's session index (see
// Tier.lookup); the caller publishes object.stored for it, from which the
// catalog learns it.
func (g *target) Put(ctx context.Context, o tier.Object) (string, error) {
	name := g.t.cfg.Name
	if err := o.Validate(); err != nil {
		return "", fmt.Errorf("tape tier %s: put: %w", name, err)
	}
	c, have, err := g.t.lookup(o.ID)
	if err != nil {
		return "", fmt.Errorf("put %s: %w", o.ID, err)
	}
	var seen *events.TapePosition
	if have {
		seen = &c.Pos
		if c.PackedSum == o.PackedSum && c.PackedSize == o.PackedSize {
			m, err := g.check(ctx, o.ID, c)
			switch {
			case err == nil && bytes.Equal(m, o.Manifest):
				return Location(c.Pos), nil
			case err != nil && !errors.Is(err, tier.ErrCorrupt):
				return "", fmt.Errorf("put %s: check the copy on tape: %w", o.ID, err)
			}
			// Damaged, or another manifest: written again.
		}
	}
	src, err := g.t.spoolSource(ctx, o)
	if err != nil {
		return "", fmt.Errorf("tape tier %s: put %s: %w", name, o.ID, err)
	}
	defer src.Close()
	res, err := g.t.write(ctx, Object{
		ID: o.ID, Manifest: o.Manifest, PackedSize: o.PackedSize, PackedSum: o.PackedSum,
		Open: func() (io.ReadCloser, error) { return io.NopCloser(io.NewSectionReader(src, 0, o.PackedSize)), nil },
	}, seen)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return "", fmt.Errorf("tape tier %s: put %s: %w", name, o.ID, ctx.Err())
	case errors.Is(err, tier.ErrCorrupt):
		return "", fmt.Errorf("tape tier %s: put %s: %w", name, o.ID, err)
	case errors.Is(err, bundle.ErrChecksum), errors.Is(err, io.ErrUnexpectedEOF):
		return "", fmt.Errorf("tape tier %s: put %s: %w: %w", name, o.ID, tier.ErrCorrupt, err)
	case errors.Is(err, ErrNoVolume):
		return "", fmt.Errorf("tape tier %s: put %s: %w: %w", name, o.ID, tier.ErrUnavailable, err)
	default:
		return "", fmt.Errorf("tape tier %s: put %s: %w", name, o.ID, err)
	}
	nc := TapeCopy{Pos: res.pos, PackedSize: o.PackedSize, PackedSum: o.PackedSum}
	m, err := g.check(ctx, o.ID, nc)
	if err == nil && !bytes.Equal(m, o.Manifest) {
		err = fmt.Errorf("tape tier %s: object %s: the manifest on tape is not the one given", name, o.ID)
		if !res.reused {
			err = fmt.Errorf("%w: %w", err, tier.ErrCorrupt)
		}
	}
	if err != nil {
		if res.indexed {
			g.t.forget(o.ID, nc, res.prev, res.hadPrev)
		}
		return "", fmt.Errorf("put %s: read back: %w", o.ID, err)
	}
	return Location(res.pos), nil
}

// spoolSource copies the packed bytes of o to an unlinked file under
// StateDir, checking them against o.PackedSize and o.PackedSum (ErrCorrupt
// on a mismatch), and returns the file.
func (t *Tier) spoolSource(ctx context.Context, o tier.Object) (*os.File, error) {
	rc, err := o.Open()
	if err != nil {
		return nil, fmt.Errorf("open source: %w", err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(filepath.Join(t.cfg.StateDir, "spool"), "put-*")
	if err != nil {
		return nil, fmt.Errorf("spool source: %w", err)
	}
	os.Remove(f.Name())
	_, err = io.Copy(f, &ctxReader{ctx: ctx, r: tier.NewVerifyingReader(rc, o.PackedSize, o.PackedSum)})
	if err != nil {
		f.Close()
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		if errors.Is(err, tier.ErrCorrupt) {
			return nil, err
		}
		return nil, fmt.Errorf("spool source: %w", err)
	}
	return f, nil
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// write queues obj for the writer as a Put and waits until it is durable
// (or failed).
func (t *Tier) write(ctx context.Context, obj Object, seen *events.TapePosition) (addResult, error) {
	r := &addReq{obj: obj, res: make(chan addResult, 1), put: true, seen: seen}
	if err := t.send(ctx, r); err != nil {
		return addResult{}, err
	}
	select {
	case res := <-r.res:
		return res, res.err
	case <-ctx.Done():
		return addResult{}, ctx.Err()
	case <-t.done:
		return addResult{}, ErrTierClosed
	}
}

// Delete is refused: a copy on tape cannot be removed (tape space comes
// back only by relabelling a whole volume, which the operator does), so
// the object stays visible and readable, and prune must keep counting it.
func (g *target) Delete(_ context.Context, id string) error {
	if err := tier.ValidateID(id); err != nil {
		return fmt.Errorf("tape tier %s: delete: %w", g.t.cfg.Name, err)
	}
	return fmt.Errorf("tape tier %s: delete %s: %w: a copy on tape stays until its volume is relabelled", g.t.cfg.Name, id, tier.ErrNotSupported)
}

func (g *target) copyOf(id string) (TapeCopy, error) {
	if err := tier.ValidateID(id); err != nil {
		return TapeCopy{}, err
	}
	c, ok, err := g.t.lookup(id)
	if err != nil {
		return TapeCopy{}, err
	}
	if !ok {
		return TapeCopy{}, fmt.Errorf("tape tier %s: object %s: %w", g.t.cfg.Name, id, tier.ErrNotFound)
	}
	return c, nil
}

// TapePosition is where the newest copy of id lies on tape: what an
// object.stored event of a tape tier must carry (a copy re-created by
// Put, e.g. by scrub, has a new position).
func (g *target) TapePosition(_ context.Context, id string) (events.TapePosition, error) {
	c, err := g.copyOf(id)
	if err != nil {
		return events.TapePosition{}, err
	}
	return c.Pos, nil
}

// Stat answers from the session index or the catalog (no tape movement).
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
	_, err = g.check(ctx, id, c)
	return info, err
}

// check reads copy c of object id back from tape: the members before its
// bytes (the manifest, checked against its BLAKE3, and the .zst header,
// whose PAX size and sum must be c's) and every byte (BLAKE3 against c).
// It returns the manifest.
func (g *target) check(ctx context.Context, id string, c TapeCopy) ([]byte, error) {
	hres, err := g.t.read(ctx, &readReq{id: id, pos: c.Pos, header: true})
	if err != nil {
		return nil, err
	}
	if hres.header.PackedSize != c.PackedSize || hres.header.PackedSum != c.PackedSum {
		return nil, fmt.Errorf("tape tier %s: object %s: tape records %d bytes %s, catalog %d %s: %w", g.t.cfg.Name, id,
			hres.header.PackedSize, hres.header.PackedSum, c.PackedSize, c.PackedSum, tier.ErrCorrupt)
	}
	h := blake3.New()
	if _, err := g.t.read(ctx, &readReq{id: id, pos: c.Pos, off: 0, n: c.PackedSize, w: h}); err != nil {
		return nil, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != c.PackedSum {
		return nil, fmt.Errorf("tape tier %s: object %s: BLAKE3 %s, want %s: %w", g.t.cfg.Name, id, got, c.PackedSum, tier.ErrCorrupt)
	}
	return hres.header.Manifest, nil
}

// List reads every volume of the pool from end to end (volume.Scan: every
// byte read and hashed) and reports each object whose hashes check, once:
// an object on tape more than once (written again after damage, a
// redelivery or another packing) is reported with the copy that Stat
// names if that one is intact, else with the last intact one found. It is
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
	var order []string
	copies := map[string][]listed{}
	for _, l := range res.found {
		if _, ok := copies[l.info.ID]; !ok {
			order = append(order, l.info.ID)
		}
		copies[l.info.ID] = append(copies[l.info.ID], l)
	}
	for _, id := range order {
		cs := copies[id]
		pick := cs[len(cs)-1].info
		if len(cs) > 1 {
			c, ok, err := g.t.lookup(id)
			if err != nil {
				return err
			}
			for _, l := range cs {
				if ok && samePlace(l.pos, c.Pos) {
					pick = l.info
				}
			}
		}
		if err := fn(pick); err != nil {
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
	found []listed // in tape order, volume by volume
	err   error
}

// listed is an intact copy found by a scan.
type listed struct {
	info tier.Info
	pos  events.TapePosition
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
					res.found = append(res.found, listed{
						info: tier.Info{ID: o.ID, PackedSize: o.PackedSize, PackedSum: o.PackedSum},
						pos:  bundle.Position(v, f.TapeFile, f.StartBlock, info.Label.BlockSize, o.DataOffset),
					})
				}
			}
		}
	}
	return res
}
