package recall

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/tier"
)

// Repair re-creates the copy of objectID on to (a missing or corrupt copy)
// from a good copy on another tier, and returns the tier it copied from and
// the new copy's location. It copies the packed bytes and the manifest as
// they are, so the object id and packed sum stay the same, and checks the
// packed BLAKE3 on the way: a bad source makes the read fail before its
// last byte, so to.Put can never complete a copy of wrong bytes (and Put
// reads its copy back before it returns). A source that fails is reported
// through OnFailure and the next is tried; a failure of to itself is
// returned at once.
func (r *Reader) Repair(ctx context.Context, objectID string, to tier.Target) (from, location string, err error) {
	id := objectID
	srcs, skipped, err := r.plan(id)
	if err != nil {
		return "", "", err
	}
	nc := &NoCopyError{ObjectID: id, Skipped: skipped}
	for _, src := range srcs {
		if src.tier == to.Name() {
			continue
		}
		loc, srcErr, err := r.repairFrom(ctx, src, id, to)
		if err == nil {
			r.succeeded(id, src.tier)
			return src.tier, loc, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return "", "", fmt.Errorf("repair %s on %s: %w", id, to.Name(), cerr)
		}
		if srcErr == nil {
			return "", "", fmt.Errorf("repair %s on %s from %s: %w", id, to.Name(), src.tier, err)
		}
		r.failed(id, src.tier, srcErr)
		nc.Failures = append(nc.Failures, CopyFailure{src.tier, srcErr})
	}
	return "", "", fmt.Errorf("repair %s on %s: %w", id, to.Name(), nc)
}

// repairFrom copies the object from src to to. srcErr is set when the
// source is at fault; err is set on any failure.
func (r *Reader) repairFrom(ctx context.Context, src source, id string, to tier.Target) (loc string, srcErr, err error) {
	raw, err := src.t.Manifest(ctx, id)
	if err != nil {
		return "", fmt.Errorf("manifest: %w", err), err
	}
	m, err := object.DecodeManifest(raw)
	if err != nil {
		err = fmt.Errorf("manifest: %w", corrupt(err))
		return "", err, err
	}
	if m.ObjectID != id {
		err = fmt.Errorf("manifest: %w: it describes object %s", tier.ErrCorrupt, m.ObjectID)
		return "", err, err
	}
	var mu sync.Mutex
	var readErr error // the source's failure, if any. Protected by mu.
	setErr := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if readErr == nil {
			readErr = err
		}
	}
	open := func() (io.ReadCloser, error) {
		rc, err := src.t.GetRange(ctx, id, 0, m.PackedSize)
		if err != nil {
			err = classifyGet(0, m.PackedSize, err)
			setErr(err)
			return nil, err
		}
		return &sourceReader{rc: rc, v: tier.NewVerifyingReader(rc, m.PackedSize, m.PackedSum), fail: setErr}, nil
	}
	loc, err = to.Put(ctx, tier.Object{
		ID:         id,
		PackedSize: m.PackedSize,
		PackedSum:  m.PackedSum,
		Manifest:   raw,
		Open:       open,
	})
	mu.Lock()
	srcErr = readErr
	mu.Unlock()
	return loc, srcErr, err
}

// sourceReader reads a source copy through a VerifyingReader and records
// its failure (a read error, or bytes that are not the packed sum).
type sourceReader struct {
	rc   io.ReadCloser
	v    *tier.VerifyingReader
	fail func(error)
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.v.Read(p)
	if err != nil && err != io.EOF {
		s.fail(err)
	}
	return n, err
}

func (s *sourceReader) Close() error { return s.rc.Close() }

// CopyTo makes a good copy of objectID (of size bytes uncompressed) on to
// from a good copy elsewhere (Repair) and returns the object.stored event
// that records it (tier.StoredEvent) and the tier it copied from. The
// caller publishes the event.
func (r *Reader) CopyTo(ctx context.Context, objectID string, size int64, to tier.Target) (*events.ObjectStored, string, error) {
	from, loc, err := r.Repair(ctx, objectID, to)
	if err != nil {
		return nil, "", err
	}
	ev, err := tier.StoredEvent(ctx, to, objectID, size, loc)
	if err != nil {
		return nil, from, fmt.Errorf("copied from %s: %w", from, err)
	}
	return ev, from, nil
}
