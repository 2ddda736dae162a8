// Package tapewriter is the tape-writer stage's logic: it aggregates
// packed objects into bundles (see package bundle), feeds the drive from a
// RAM ring (or a disk spool when the source is too slow) so that the drive
// streams, ends bundles with filemarks, moves on to the next volume at
// early warning, and reports each object stored only after a flushing
// filemark made it durable.
//
// # Streaming
//
// Blocks go into a RAM ring of RingSize bytes. The writer starts writing
// when the ring is StartFill full and writes while it holds more than
// StopFill; if the ring reaches StopFill and the source has been slower
// than the drive's lowest matched speed (MinRate), it stops (one planned
// stop instead of shoe-shining) and later bundles are spooled to disk: a
// spooled bundle is written in one go at the drive's full speed and ends
// with a flushing filemark (the drive stops there anyway). A source at or
// above MinRate keeps the drive streaming through the ring: the drive
// matches its speed.
//
// # End of medium
//
// At early warning st lets a write fail with ENOSPC, then succeed, and so
// on. The writer retries each such write once, finishes the object it is
// writing, closes the bundle part with a STRATA-CONTINUED.json trailer and
// a flushing filemark, reports what it holds, and goes on with part 2 of
// the same bundle on the next volume (its STRATA-BUNDLE.json names the
// previous part). If the physical end comes first, or a write fails, the
// objects not yet reported are written again on the next volume (Object.Open
// is called again): nothing is reported that is not durable and complete.
//
// A Writer is used by one goroutine (the stage's consumer loop).
package tapewriter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
)

// Object is a packed object to put on tape. Objects are opaque: an id,
// manifest bytes and packed bytes with their size and BLAKE3.
type Object struct {
	ID         string
	Manifest   []byte
	PackedSize int64
	PackedSum  string
	// Open returns the packed bytes. It may be called again when a bundle
	// has to be rewritten on another volume.
	Open func() (io.ReadCloser, error)
}

// Errors.
var (
	// ErrNoVolume: no usable volume is left in Config.Volumes.
	ErrNoVolume = errors.New("tapewriter: no writable volume left")
	// errVolumeLost: the current volume cannot take more (physical end or a
	// write error); what it held unreported is written again elsewhere.
	errVolumeLost = errors.New("tapewriter: volume lost")
)

// objectError is the failure of one object alone: it is invalid, its
// source could not be opened or read, or its bytes do not match its
// packed sum. The writer goes on without it (a member whose bytes are
// not its sum may be on tape, but it is never reported stored).
type objectError struct {
	id  string
	err error
}

func (e *objectError) Error() string {
	return "tapewriter: object " + e.id + " not written: " + e.err.Error()
}
func (e *objectError) Unwrap() error { return e.err }

// splitErrors separates the failures of single objects in err (from Add,
// Flush or Tick), by object id, from the rest, which stop the writer.
func splitErrors(err error) (objects map[string]error, rest error) {
	var others []error
	var walk func(error)
	walk = func(e error) {
		var oe *objectError
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		switch {
		case e == nil:
		case errors.As(e, &oe):
			if objects == nil {
				objects = map[string]error{}
			}
			objects[oe.id] = e
		default:
			others = append(others, e)
		}
	}
	walk(err)
	return objects, errors.Join(others...)
}

type item struct {
	block    []byte
	filemark bool
	flush    bool
	count    int // filemarks
}

func (it item) size() int64 { return int64(len(it.block)) }

type volume struct {
	id    string
	d     tape.Drive
	label bundle.Label
	next  int64 // logical block of the next enqueued item
	file  int64 // tape file of the next bundle
}

type placedObj struct {
	obj   Object
	entry bundle.Entry
}

type openBundle struct {
	id      string
	part    int
	vol     string
	file    int64
	start   int64 // logical block of its first block
	w       *bundle.Writer
	objs    []placedObj
	started int64 // Now() at open, ns
	spool   bool
}

// Writer writes objects to tape. See the package doc.
type Writer struct {
	cfg Config
	log *slog.Logger

	volIdx int // next index in cfg.Volumes to try
	vol    *volume

	cur        *openBundle
	closed     []*openBundle // closed, not reported yet
	sinceFlush int

	ring      []item
	ringBytes int64
	streaming bool
	spool     *os.File
	spoolQ    []item // items in the spool file (blocks are read back)
	spoolOff  int64
	slowSrc   bool // the source was measured slower than MinRate

	srcBytes int64
	srcTime  int64 // ns the source took (time outside Add)
	lastExit int64

	ew bool // early warning seen on the current volume
}

// New returns a Writer.
func New(cfg Config) (*Writer, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.SpoolDir, 0o755); err != nil {
		return nil, fmt.Errorf("tapewriter: spool dir: %w", err)
	}
	w := &Writer{cfg: cfg, log: cfg.Logger}
	w.lastExit = int64(cfg.Now())
	return w, nil
}

func (w *Writer) now() int64 { return int64(w.cfg.Now()) }

// Volume returns the id of the mounted volume ("" if none).
func (w *Writer) Volume() string {
	if w.vol == nil {
		return ""
	}
	return w.vol.id
}

// Add puts obj into the current bundle. It returns once the object's
// bytes are in the bundle stream (ring, spool or drive); Stored reports it
// later. An error about one object (obj, or one written again after a
// volume was lost: it is invalid, its bytes do not match PackedSum, a read
// error) names that object and leaves the writer usable; ErrNoVolume does
// not. Several failures are joined (errors.Join).
func (w *Writer) Add(ctx context.Context, obj Object) error {
	if err := bundle.ValidID(obj.ID); err != nil {
		return errors.Join(&objectError{obj.ID, err})
	}
	if obj.Open == nil || obj.PackedSize < 0 {
		return errors.Join(&objectError{obj.ID, errors.New("no Open or negative size")})
	}
	if err := bundle.ValidID(obj.PackedSum); err != nil {
		return errors.Join(&objectError{obj.ID, fmt.Errorf("packed sum: %w", err)})
	}
	t := w.now()
	w.srcTime += t - w.lastExit
	w.srcBytes += obj.PackedSize
	defer func() { w.lastExit = w.now() }()
	return w.addQueue(ctx, []Object{obj})
}

func (w *Writer) addQueue(ctx context.Context, q []Object) error {
	var errs []error
	for len(q) > 0 {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		o := q[0]
		q = q[1:]
		placed, err := w.addOne(ctx, o)
		if errors.Is(err, errVolumeLost) {
			rq, err := w.loseVolume(ctx, err)
			if err != nil {
				return errors.Join(append(errs, err)...)
			}
			if !placed {
				rq = append(rq, o)
			}
			q = append(rq, q...)
			continue
		}
		if err != nil {
			errs = append(errs, err)
			if errors.Is(err, ErrNoVolume) || ctx.Err() != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// addOne writes o into the current bundle; placed reports whether o is
// now part of a bundle (and will be reported or requeued with it).
func (w *Writer) addOne(ctx context.Context, o Object) (placed bool, err error) {
	if w.vol == nil {
		if err := w.mountNext(ctx); err != nil {
			return false, err
		}
	}
	if err := w.closeIfDue(); err != nil {
		return false, err
	}
	if w.cur == nil {
		if err := w.openBundle(newID(), 1, nil); err != nil {
			return false, err
		}
	}
	rc, err := o.Open()
	if err != nil {
		return false, &objectError{o.ID, fmt.Errorf("open: %w", err)}
	}
	e, err := w.cur.w.Add(o.ID, o.Manifest, o.PackedSize, o.PackedSum, rc)
	rc.Close()
	if err != nil {
		if errors.Is(err, errVolumeLost) {
			return false, err
		}
		if e.End == 0 {
			// The bundle stream is broken (not an error of the object).
			return false, fmt.Errorf("tapewriter: %w: %w", errVolumeLost, err)
		}
		w.log.Warn("object not written", "object", o.ID, "err", err)
		return false, &objectError{o.ID, err}
	}
	w.cur.objs = append(w.cur.objs, placedObj{obj: o, entry: e})
	if w.ew {
		return true, w.continueOnNextVolume(ctx)
	}
	return true, nil
}

func (w *Writer) closeIfDue() error {
	if w.cur != nil && (w.cur.w.Offset() >= w.cfg.BundleSize || w.now()-w.cur.started >= int64(w.cfg.BundleAge)) {
		return w.closeBundle(w.sinceFlush+1 >= w.cfg.FlushEvery, nil)
	}
	return nil
}

// Tick closes the current bundle if it is older than BundleAge; the stage
// calls it periodically so that a quiet source still gets its objects
// stored.
func (w *Writer) Tick(ctx context.Context) error {
	if w.vol == nil {
		return nil
	}
	err := w.closeIfDue()
	if errors.Is(err, errVolumeLost) {
		rq, err := w.loseVolume(ctx, err)
		if err != nil {
			return err
		}
		return w.addQueue(ctx, rq)
	}
	return err
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (w *Writer) openBundle(id string, part int, from *bundle.Place) error {
	b := &openBundle{id: id, part: part, vol: w.vol.id, file: w.vol.file, start: w.vol.next,
		started: w.now(), spool: w.slowSrc}
	bw, err := bundle.NewWriter(w.vol.label.BlockSize, bundle.Header{Bundle: id, Part: part, ContinuesFrom: from}, w.emit)
	if err != nil {
		if errors.Is(err, errVolumeLost) {
			return err
		}
		return fmt.Errorf("tapewriter: %w: %w", errVolumeLost, err)
	}
	b.w = bw
	w.cur = b
	// Halve the source measurement at each bundle: it follows the source.
	w.srcBytes /= 2
	w.srcTime /= 2
	return nil
}

// closeBundle ends the current bundle with a filemark, flushing if asked
// (always for a spooled bundle), and writes everything out when flushing.
func (w *Writer) closeBundle(flush bool, cont *bundle.Continued) error {
	b := w.cur
	if err := b.w.Close(cont); err != nil {
		if errors.Is(err, errVolumeLost) {
			return err
		}
		return fmt.Errorf("tapewriter: %w: %w", errVolumeLost, err)
	}
	flush = flush || b.spool || cont != nil
	w.cur = nil
	w.closed = append(w.closed, b)
	w.vol.file++
	if err := w.enqueue(item{filemark: true, flush: flush, count: 1}); err != nil {
		return err
	}
	w.sinceFlush++
	if flush {
		return w.drainAll()
	}
	return w.pump()
}

// Flush closes the current bundle, writes everything out with a flushing
// filemark and reports every object written so far.
//
// Objects written again after a volume was lost may fail on their own
// (see Add): Flush goes on without them and returns their errors.
func (w *Writer) Flush(ctx context.Context) error {
	var failed []error // of single objects
	for {
		err := w.flushOnce()
		if !errors.Is(err, errVolumeLost) {
			return errors.Join(append(failed, err)...)
		}
		rq, err := w.loseVolume(ctx, err)
		if err != nil {
			return errors.Join(append(failed, err)...)
		}
		if err := w.addQueue(ctx, rq); err != nil {
			failed = append(failed, err)
			if _, rest := splitErrors(err); rest != nil {
				return errors.Join(failed...)
			}
		}
	}
}

func (w *Writer) flushOnce() error {
	if w.cur != nil {
		return w.closeBundle(true, nil)
	}
	if len(w.closed) == 0 {
		return nil
	}
	// Bundles ended with non-flushing filemarks: MTWEOF 0 flushes.
	if err := w.enqueue(item{filemark: true, flush: true, count: 0}); err != nil {
		return err
	}
	return w.drainAll()
}

// Close flushes and dismounts the volume.
func (w *Writer) Close(ctx context.Context) error {
	err := w.Flush(ctx)
	if w.vol != nil {
		err = errors.Join(err, w.cfg.Changer.Dismount(ctx, w.vol.id))
		w.vol = nil
	}
	if w.spool != nil {
		w.spool.Close()
		os.Remove(w.spool.Name())
		w.spool = nil
	}
	return err
}

// emit receives each block of the bundle stream.
func (w *Writer) emit(b []byte) error { return w.enqueue(item{block: b}) }

func (w *Writer) enqueue(it item) error {
	w.vol.next += int64(max(it.count, 1))
	if it.filemark && it.count == 0 {
		w.vol.next--
	}
	if w.cur != nil && w.cur.spool && !it.filemark {
		return w.spoolWrite(it)
	}
	if len(w.spoolQ) > 0 {
		// Keep order: behind what is spooled.
		w.spoolQ = append(w.spoolQ, it)
		return nil
	}
	w.ring = append(w.ring, it)
	w.ringBytes += it.size()
	return w.pump()
}

func (w *Writer) spoolWrite(it item) error {
	if w.spool == nil {
		f, err := os.CreateTemp(w.cfg.SpoolDir, "spool-*")
		if err != nil {
			return fmt.Errorf("tapewriter: spool: %w", err)
		}
		w.spool, w.spoolOff = f, 0
	}
	if _, err := w.spool.WriteAt(it.block, w.spoolOff); err != nil {
		return fmt.Errorf("tapewriter: spool: %w", err)
	}
	w.spoolOff += int64(len(it.block))
	w.spoolQ = append(w.spoolQ, item{count: len(it.block)})
	return nil
}

// sourceSlow reports whether the source has been slower than MinRate.
func (w *Writer) sourceSlow() bool {
	if w.srcTime <= 0 || w.cfg.MinRate == 0 {
		return false
	}
	return float64(w.srcBytes)/(float64(w.srcTime)/1e9) < w.cfg.MinRate
}

// pump applies the ring policy.
func (w *Writer) pump() error {
	start := int64(w.cfg.StartFill * float64(w.cfg.RingSize))
	stop := int64(w.cfg.StopFill * float64(w.cfg.RingSize))
	if !w.streaming && w.ringBytes >= start {
		if w.sourceSlow() && w.cur != nil && !w.cur.spool {
			// Too slow to stream: spool the rest of this bundle.
			w.slowSrc = true
			w.cur.spool = true
			w.log.Info("source below the drive's lowest matched speed: spooling")
			return nil
		}
		w.streaming = true
	}
	if !w.streaming && w.ringBytes < w.cfg.RingSize {
		return nil
	}
	for len(w.ring) > 0 && (w.ringBytes > stop || w.ringBytes >= w.cfg.RingSize || w.ring[0].filemark) {
		if err := w.writeHead(); err != nil {
			return err
		}
	}
	if w.ringBytes <= stop && w.sourceSlow() {
		w.streaming = false
		w.slowSrc = true
	} else if !w.sourceSlow() {
		w.slowSrc = false
	}
	return nil
}

func (w *Writer) writeHead() error {
	it := w.ring[0]
	if err := w.writeItem(it); err != nil {
		return err
	}
	w.ring[0] = item{}
	w.ring = w.ring[1:]
	w.ringBytes -= it.size()
	return nil
}

// drainAll writes the ring, then the spool, to the drive.
func (w *Writer) drainAll() error {
	for len(w.ring) > 0 {
		if err := w.writeHead(); err != nil {
			return err
		}
	}
	if len(w.spoolQ) > 0 {
		var off int64
		buf := make([]byte, bundle.MaxBlockSize)
		for len(w.spoolQ) > 0 {
			it := w.spoolQ[0]
			if !it.filemark && it.block == nil {
				b := buf[:it.count]
				if _, err := w.spool.ReadAt(b, off); err != nil {
					return fmt.Errorf("tapewriter: read spool: %w", err)
				}
				off += int64(it.count)
				it = item{block: b}
			}
			if err := w.writeItem(it); err != nil {
				return err
			}
			w.spoolQ = w.spoolQ[1:]
		}
		w.spoolQ = nil
		if err := w.spool.Truncate(0); err != nil {
			return fmt.Errorf("tapewriter: spool: %w", err)
		}
		w.spoolOff = 0
	}
	w.streaming = false
	return nil
}

// writeItem writes one block or filemark, retrying once on ENOSPC (st's
// early-warning alternation).
func (w *Writer) writeItem(it item) error {
	for attempt := 0; ; attempt++ {
		var err error
		if it.filemark {
			if it.flush && attempt == 0 {
				w.cfg.Failpoints.Hit(FailBeforeFilemark)
			}
			err = w.vol.d.WriteFilemarks(it.count, it.flush)
		} else {
			err = w.vol.d.WriteBlock(it.block)
		}
		if err == nil {
			break
		}
		if tape.IsEndOfMedium(err) && attempt == 0 {
			if !w.ew {
				w.log.Info("early warning", "volume", w.vol.id)
			}
			w.ew = true
			continue
		}
		return fmt.Errorf("%w: %s: %w", errVolumeLost, w.vol.id, err)
	}
	if it.filemark && it.flush {
		w.cfg.Failpoints.Hit(FailAfterFilemark)
		w.report()
	}
	return nil
}

// report calls Stored for every object of the closed bundles: a flushing
// filemark was just written after them.
func (w *Writer) report() {
	for _, b := range w.closed {
		for _, p := range b.objs {
			w.cfg.Stored(p.obj, bundle.Position(b.vol, b.file, b.start, w.vol.label.BlockSize, p.entry.DataOffset))
		}
	}
	w.closed = nil
	w.sinceFlush = 0
}

// continueOnNextVolume closes the bundle part at early warning with a
// continuation trailer and goes on with its next part on the next volume.
func (w *Writer) continueOnNextVolume(ctx context.Context) error {
	b := w.cur
	from := bundle.Place{Volume: b.vol, TapeFile: b.file}
	if err := w.closeBundle(true, &bundle.Continued{Bundle: b.id, Part: b.part, NextPart: b.part + 1}); err != nil {
		return err
	}
	w.cfg.Event(VolumeEvent{Volume: w.vol.id, Kind: EventFull})
	w.cfg.Event(VolumeEvent{Volume: w.vol.id, Kind: EventContinued})
	if err := w.cfg.Changer.Dismount(ctx, w.vol.id); err != nil {
		w.log.Warn("dismount", "volume", w.vol.id, "err", err)
	}
	w.vol = nil
	if err := w.mountNext(ctx); err != nil {
		return err
	}
	return w.openBundle(b.id, b.part+1, &from)
}

// loseVolume abandons the current volume after errVolumeLost: it tries a
// flushing filemark (reporting complete bundles if that works), drops
// everything queued, and returns the unreported objects to write again.
func (w *Writer) loseVolume(ctx context.Context, cause error) ([]Object, error) {
	kind := EventError
	if tape.IsEndOfMedium(cause) {
		kind = EventFull
	}
	w.log.Warn("volume abandoned", "volume", w.vol.id, "err", cause)
	w.cfg.Event(VolumeEvent{Volume: w.vol.id, Kind: kind, Err: cause})
	var rq []Object
	keep := w.closed
	if w.cur != nil {
		for _, p := range w.cur.objs {
			rq = append(rq, p.obj)
		}
		w.cur = nil
	}
	// Complete bundles whose filemark reached the drive are durable after
	// a flushing filemark; anything still queued is not.
	queuedFM := 0
	for _, it := range append(w.ring, w.spoolQ...) {
		if it.filemark && it.count > 0 {
			queuedFM++
		}
	}
	w.ring, w.ringBytes, w.spoolQ, w.streaming = nil, 0, nil, false
	if w.spool != nil {
		w.spool.Truncate(0)
		w.spoolOff = 0
	}
	written := len(keep) - queuedFM
	if written > 0 && w.vol.d.WriteFilemarks(0, true) == nil {
		w.closed = keep[:written]
		w.report()
		keep = keep[written:]
	}
	var tail []Object
	for _, b := range keep {
		for _, p := range b.objs {
			tail = append(tail, p.obj)
		}
	}
	w.closed = nil
	if err := w.cfg.Changer.Dismount(ctx, w.vol.id); err != nil {
		w.log.Warn("dismount", "volume", w.vol.id, "err", err)
	}
	w.vol = nil
	w.ew = false
	if err := w.mountNext(ctx); err != nil {
		return nil, err
	}
	return append(tail, rq...), nil
}

// mountNext mounts the next usable volume of cfg.Volumes.
func (w *Writer) mountNext(ctx context.Context) error {
	for w.volIdx < len(w.cfg.Volumes) {
		id := w.cfg.Volumes[w.volIdx]
		w.volIdx++
		v, kind, err := w.tryMount(ctx, id)
		if err == nil {
			w.vol = v
			w.ew = false
			w.cfg.Event(VolumeEvent{Volume: id, Kind: EventMounted})
			w.log.Info("volume mounted", "volume", id, "tape_file", v.file, "block", v.next)
			return nil
		}
		w.log.Warn("volume skipped", "volume", id, "kind", kind, "err", err)
		w.cfg.Event(VolumeEvent{Volume: id, Kind: kind, Err: err})
		if v != nil {
			w.cfg.Changer.Dismount(ctx, id)
		}
	}
	return ErrNoVolume
}

func (w *Writer) tryMount(ctx context.Context, id string) (*volume, string, error) {
	d, err := w.cfg.Changer.Mount(ctx, id)
	if err != nil {
		return nil, EventError, fmt.Errorf("mount %s: %w", id, err)
	}
	v := &volume{id: id, d: d}
	st, err := d.Status()
	if err != nil {
		return v, EventError, fmt.Errorf("mount %s: %w", id, err)
	}
	if st.WriteProtected {
		return v, EventWriteProtected, fmt.Errorf("mount %s: %w", id, tape.ErrWriteProtected)
	}
	if err := d.SetBlockSize(0); err != nil {
		return v, EventError, fmt.Errorf("mount %s: %w", id, err)
	}
	if err := d.SetCompression(false); err != nil {
		return v, EventError, fmt.Errorf("mount %s: %w", id, err)
	}
	l, err := bundle.ReadLabel(d)
	if err != nil {
		return v, EventLabelMismatch, fmt.Errorf("mount %s: %w", id, err)
	}
	if l.Volume != id || l.Pool != w.cfg.Pool {
		return v, EventLabelMismatch, fmt.Errorf("mount %s: label says volume %q pool %q, want %q %q", id, l.Volume, l.Pool, id, w.cfg.Pool)
	}
	v.label = l
	if err := d.EndOfData(); err != nil {
		return v, EventError, fmt.Errorf("mount %s: %w", id, err)
	}
	if st, err = d.Status(); err != nil {
		return v, EventError, fmt.Errorf("mount %s: %w", id, err)
	}
	if st.EOT {
		return v, EventFull, fmt.Errorf("mount %s: past early warning: %w", id, tape.ErrNoSpace)
	}
	if v.next, err = d.Tell(); err != nil {
		return v, EventError, fmt.Errorf("mount %s: %w", id, err)
	}
	v.file = st.File
	// A tape file cut short (a power loss after part of a bundle reached
	// the medium, or damage) ends without a filemark. Close it, so that
	// the next bundle is a tape file of its own, which tar and Scan read,
	// not a tail glued to the broken one.
	open, err := lastFileOpen(d, st, v.next)
	if err != nil {
		return v, EventError, fmt.Errorf("mount %s: %w", id, err)
	}
	if open {
		w.log.Warn("last tape file cut short: closing it with a filemark", "volume", id, "tape_file", st.File, "block", v.next)
		if err := d.WriteFilemarks(1, true); err != nil {
			return v, EventError, fmt.Errorf("mount %s: close tape file %d: %w", id, st.File, err)
		}
		v.next++
		v.file = st.File + 1
	}
	return v, "", nil
}

// lastFileOpen reports whether the data of d, positioned at end of data
// (logical block end, status st), ends with a record rather than a
// filemark. st knows when the position is the start of a tape file (Block
// 0); otherwise the last record is read. d is left at end of data.
func lastFileOpen(d tape.Drive, st tape.Status, end int64) (bool, error) {
	if st.Block == 0 || end == 0 {
		return false, nil
	}
	if err := d.Locate(end - 1); err != nil {
		return false, fmt.Errorf("read the last record: %w", err)
	}
	n, err := d.ReadBlock(make([]byte, bundle.MaxBlockSize))
	if err != nil && !errors.Is(err, tape.ErrShortBuffer) {
		return false, fmt.Errorf("read the last record: %w", err)
	}
	if err := d.EndOfData(); err != nil {
		return false, err
	}
	return n > 0 || err != nil, nil
}
