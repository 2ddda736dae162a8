// Package tier is the cold-tier contract of Strata: the Target interface
// that the directory tier (tier/dir), S3 (tier/s3), any rclone remote
// (tier/rclone) and tape (workers/tapewriter) implement, its sentinel
// errors, the naming of objects on every target, and the BLAKE3 checks
// they share. Every target passes one conformance suite, tiertest.Run.
// This package imports no stage and no target: both import it.
//
// An object is opaque here: an id (64 lowercase hex, the BLAKE3 of the
// uncompressed content), its packed bytes (a seekable zstd stream whose
// BLAKE3 is the packed sum) and a JSON manifest stored beside it. Targets
// verify whole-blob hashes only; the per-frame verification of ranged reads
// happens in the caller, which knows the frame table from the manifest.
//
// Layout on every target, relative to its root (directory, bucket prefix or
// rclone remote path):
//
//	objects/<aa>/<id>.zst   the packed bytes (aa = first two hex digits of id)
//	objects/<aa>/<id>.json  the manifest, byte for byte as given to Put
//	objects/<aa>/<id>.b3    "<packed sum>  <id>.zst\n" (b3sum format; S3 keeps
//	                        the sum in object metadata instead)
//
// so `b3sum -c <id>.b3` and `zstd -d <id>.zst` restore and check an object
// without Strata. An object is visible (Stat, List, GetRange find it) exactly
// when its .zst exists; writers make it appear atomically and only after its
// manifest and sum are in place.
package tier

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/strata-hsm/strata/events"
)

// Sentinel errors. Targets wrap them with %w and context (target name, id);
// callers test with errors.Is.
var (
	// ErrNotFound: the target is reachable and holds no such object.
	ErrNotFound = errors.New("tier: object not found")
	// ErrCorrupt: the stored copy (or the bytes offered to Put) does not
	// match its recorded size or BLAKE3. A Put of a good copy repairs it.
	ErrCorrupt = errors.New("tier: object corrupt")
	// ErrUnavailable: the target cannot be reached right now (server down,
	// network error, directory tier not mounted). Nothing is known about
	// the object; recall falls back to another copy and the stage retries.
	ErrUnavailable = errors.New("tier: target unavailable")
	// ErrRange: a ranged read asked for bytes past the end of the object.
	ErrRange = errors.New("tier: range past end of object")
	// ErrNotSupported: the target cannot do this by nature, and did
	// nothing. Tape returns it from Delete: a copy on tape cannot be
	// removed (space comes back only by relabelling a whole volume), so
	// it stays stored, visible and readable, and the caller must go on
	// counting it (prune never reports it deleted).
	ErrNotSupported = errors.New("tier: not supported by this target")
)

// Object is what Put stores.
type Object struct {
	ID         string // BLAKE3 of the uncompressed content, 64 lowercase hex
	PackedSize int64  // exact length of the packed bytes (> 0)
	PackedSum  string // BLAKE3-256 of the packed bytes, 64 lowercase hex
	Manifest   []byte // JSON manifest, stored and returned byte for byte
	// Open returns a fresh reader of the packed bytes. Put may call it more
	// than once (never concurrently) and closes every reader it opens.
	Open func() (io.ReadCloser, error)
}

// Validate checks the fields of o without reading its bytes.
func (o Object) Validate() error {
	if err := ValidateID(o.ID); err != nil {
		return err
	}
	if o.PackedSize <= 0 {
		return fmt.Errorf("object %s: packed size %d: want > 0", o.ID, o.PackedSize)
	}
	if !isHex64(o.PackedSum) {
		return fmt.Errorf("object %s: packed sum %q: want 64 lowercase hex digits", o.ID, o.PackedSum)
	}
	if len(o.Manifest) == 0 {
		return fmt.Errorf("object %s: empty manifest", o.ID)
	}
	if o.Open == nil {
		return fmt.Errorf("object %s: no Open func", o.ID)
	}
	return nil
}

// Info describes a stored object, as recorded by the target.
type Info struct {
	ID         string
	PackedSize int64
	PackedSum  string
}

// Target is one cold tier: a place that keeps verified copies of objects.
// The store stage (workers/store) calls Put for each packed object (tape's
// own stage bundles objects without Put); recall calls Manifest and GetRange
// on the cheapest copy and falls back on error; scrub calls List and Verify,
// and Put to re-create a bad copy from a good one; prune calls Delete. All
// methods are safe for concurrent use, and every method honours ctx (a
// cancelled call returns promptly with an error wrapping ctx.Err()).
//
// Errors: every error wraps one of the sentinels when it applies —
// ErrNotFound, ErrCorrupt, ErrUnavailable, ErrRange, ErrNotSupported — or
// ctx.Err(), or is a plain error for bad arguments and local failures (for
// example one wrapping syscall.ENOSPC for a full directory tier).
type Target interface {
	// Name is the configured name of this target (a NATS subject token,
	// used as events.ObjectStored.Tier).
	Name() string
	// Kind is events.TierDirectory, events.TierS3, events.TierRclone or
	// events.TierTape.
	Kind() string

	// Put stores o and returns its location (a path or URL that a human can
	// use to find the copy). It returns nil only when the copy is durable
	// and was read back from the target and matched o.PackedSize and
	// o.PackedSum, and the manifest stored equals o.Manifest.
	//
	// Idempotent: if a valid copy with the same packed sum is already
	// there, Put reads it back to verify it and uploads nothing (only a
	// differing manifest is rewritten); a copy that is corrupt, truncated
	// or has another packed sum is replaced. Concurrent Puts of one object
	// leave one valid copy. Put never makes a partial object visible: an
	// interrupted or failed Put (ctx cancelled, reader error, bytes that do
	// not match o.PackedSum → ErrCorrupt) leaves the previous state, and a
	// later Put succeeds.
	Put(ctx context.Context, o Object) (location string, err error)

	// GetRange returns a reader of n bytes of the packed object starting at
	// off. n == 0 is allowed (an empty reader). off+n beyond the object's
	// size is ErrRange; a missing object is ErrNotFound. The bytes are not
	// verified here: the caller verifies them per frame. The reader returns
	// an error (never a silent short read) if fewer than n bytes arrive.
	GetRange(ctx context.Context, id string, off, n int64) (io.ReadCloser, error)

	// Manifest returns the manifest stored with the object (ErrNotFound if
	// the object is not visible).
	Manifest(ctx context.Context, id string) ([]byte, error)

	// Stat returns the recorded size and packed sum of a visible object,
	// cheaply (no data read). A size that differs from the recorded one is
	// ErrCorrupt.
	Stat(ctx context.Context, id string) (Info, error)

	// Verify reads the whole stored object and checks it against the
	// recorded size and packed sum: ErrCorrupt on mismatch, ErrNotFound if
	// it is missing. Used by scrub and by Put.
	Verify(ctx context.Context, id string) (Info, error)

	// List calls fn for every visible object, in no particular order, with
	// the recorded Info (the packed sum may be empty when the recorded sum
	// is missing or unreadable; Verify then reports ErrCorrupt). An error
	// from fn stops the listing and is returned.
	List(ctx context.Context, fn func(Info) error) error

	// Delete removes the object, its manifest and its sum. Deleting a
	// missing object is not an error (idempotent). A target that cannot
	// remove what it stored (tape) returns an error wrapping
	// ErrNotSupported for every valid id and changes nothing: the object
	// stays visible, and the caller must not record it as deleted.
	Delete(ctx context.Context, id string) error
}

// StageName is the durable consumer name of the store stage of tier name,
// whichever package runs it (workers/store for directory, S3 and rclone
// tiers, workers/tapewriter for tape).
func StageName(name string) string { return "store-" + name }

// ValidateID checks that id is 64 lowercase hex digits.
func ValidateID(id string) error {
	if !isHex64(id) {
		return fmt.Errorf("object id %q: want 64 lowercase hex digits", id)
	}
	return nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ObjectKey is the path of the packed bytes relative to a target's root.
func ObjectKey(id string) string { return "objects/" + id[:2] + "/" + id + ".zst" }

// ManifestKey is the path of the manifest relative to a target's root.
func ManifestKey(id string) string { return "objects/" + id[:2] + "/" + id + ".json" }

// SumKey is the path of the b3sum-format sum file relative to a target's root.
func SumKey(id string) string { return "objects/" + id[:2] + "/" + id + ".b3" }

// As finds the first target in t's chain of wrappers (a wrapper has an
// Unwrap method returning the target it wraps) that implements T: the
// optional interfaces (Sizer, a tape tier's position, a directory tier's
// location) stay visible through a wrapper such as the pruner's guard.
func As[T any](t Target) (T, bool) {
	for t != nil {
		if x, ok := t.(T); ok {
			return x, true
		}
		u, ok := t.(interface{ Unwrap() Target })
		if !ok {
			break
		}
		t = u.Unwrap()
	}
	var zero T
	return zero, false
}

// Sizer is a target that knows how many bytes it can hold in all (a
// directory tier: its filesystem's size). An object larger than that can
// never be stored there.
type Sizer interface {
	Capacity(ctx context.Context) (int64, error)
}

// ErrTooLarge marks an object larger than a whole target (Sizer).
var ErrTooLarge = errors.New("tier: object larger than the whole tier")

// tapePositioner is a tape tier's target: it says where a copy lies.
type tapePositioner interface {
	TapePosition(ctx context.Context, id string) (events.TapePosition, error)
}

// StoredEvent is the object.stored event that records the copy of id (of
// size bytes uncompressed) that was just written to t at loc: its packed
// size and sum as t reports them, and for a tape tier its position (a
// tape copy is found by its position).
func StoredEvent(ctx context.Context, t Target, id string, size int64, loc string) (*events.ObjectStored, error) {
	info, err := t.Stat(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("stat of the new copy of %s on %s: %w", id, t.Name(), err)
	}
	ev := &events.ObjectStored{ObjectID: id, Tier: t.Name(), TierKind: t.Kind(), Location: loc,
		Size: size, PackedSize: info.PackedSize, PackedSum: info.PackedSum}
	if tp, ok := As[tapePositioner](t); ok {
		pos, err := tp.TapePosition(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("tape position of the new copy of %s on %s: %w", id, t.Name(), err)
		}
		ev.Tape = &pos
	}
	return ev, nil
}
