package catalog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/strata-hsm/strata/events"
)

// State is the archive state of a file, as `strata ls` shows it.
type State uint8

// File states. The zero value is not a valid state.
const (
	// StateResident: known to Strata, content only on the hot tier (not
	// archived, or a release was skipped).
	StateResident State = iota + 1
	// StateArchiving: selected (and maybe packed and stored), not yet
	// released.
	StateArchiving
	// StateArchived: resident and equal to its current object (after a
	// completed recall); it can be released again without a new upload.
	StateArchived
	// StateReleased: a stub; the content lives only in cold copies.
	StateReleased
	// StateDirty: modified after it was archived; its cold copies are of an
	// older version.
	StateDirty
	// StateDeleted: removed from the hot tier; record and versions are kept
	// for retention.
	StateDeleted

	numStates = int(StateDeleted) + 1
)

var stateNames = [numStates]string{"", "resident", "archiving", "archived", "released", "dirty", "deleted"}

// String returns the state's name ("resident", "released", …).
func (s State) String() string {
	if int(s) < numStates && s != 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// MarshalText encodes the state as its name, for JSON output.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// States lists every valid state in order.
func States() []State {
	return []State{StateResident, StateArchiving, StateArchived, StateReleased, StateDirty, StateDeleted}
}

// CopyState tells whether a stored copy counts.
type CopyState uint8

// Copy states.
const (
	// CopyGood: stored and verified (object.stored or object.verified).
	CopyGood CopyState = iota + 1
	// CopyCorrupt: missing, unreadable or failed verification
	// (object.corrupt); it does not count as a copy.
	CopyCorrupt
)

// String returns "good" or "corrupt".
func (s CopyState) String() string {
	switch s {
	case CopyGood:
		return "good"
	case CopyCorrupt:
		return "corrupt"
	}
	return fmt.Sprintf("copystate(%d)", uint8(s))
}

// MarshalText encodes the copy state as its name, for JSON output.
func (s CopyState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// File is the catalog's record of one file, keyed by its stable file id.
type File struct {
	ID string
	// Host is the host whose hot tree holds the file: the host of the
	// subject of the event that created the record (strata.<host>.…).
	Host  string
	Path  string // last known path (kept after deletion)
	Root  string // managed tree it belongs to ("" if never selected)
	State State
	// Stat is the file as last observed by an event that carries a stat.
	Stat events.FileStat
	// ObjectID is the object of the current version ("" before the first
	// object.packed); Version is its number (0 before).
	ObjectID string
	Version  uint32
	// Recalls and RecallFailures count recall.requested and recall.failed
	// events.
	Recalls        uint64
	RecallFailures uint64
	// Seq and Updated are the stream sequence and time of the last event
	// that changed the record.
	Seq     uint64
	Updated time.Time
}

// Version is one archived version of a file: a distinct object named by
// object.packed. Numbers start at 1.
type Version struct {
	FileID     string
	Number     uint32
	ObjectID   string
	Path       string          // path when packed
	Stat       events.FileStat // stat when packed
	PackedSize int64
	PackedSum  string
	FrameSize  int64
	Frames     int64
	ArchivedAt time.Time // event time of object.packed
	Seq        uint64
}

// Object is the payload of one file version, content addressed by the
// BLAKE3 of its uncompressed bytes. The first object.packed defines it.
type Object struct {
	ID         string
	Size       int64
	PackedSize int64
	PackedSum  string
	FrameSize  int64
	Frames     int64
	Staging    string
	PackedAt   time.Time
	Seq        uint64
}

// Copy is an object stored on one tier.
type Copy struct {
	ObjectID   string
	Tier       string
	TierKind   string
	Location   string
	Size       int64
	PackedSize int64
	PackedSum  string
	Tape       *events.TapePosition // tape copies only
	State      CopyState
	Reason     string    // why it is corrupt (object.corrupt)
	StoredAt   time.Time // event time of object.stored
	VerifiedAt time.Time // event time of the last object.verified (zero if none)
	Seq        uint64
}

// StoreFailure is why a tier has no copy of an object yet: its store
// stage failed (object.store_failed), until the next object.stored (or
// object.deleted) for that tier.
type StoreFailure struct {
	ObjectID  string
	Tier      string
	Reason    string
	Attempts  int64
	Permanent bool          // the stage gave up: retrying cannot help
	RetryIn   time.Duration // before the next attempt (0 when Permanent)
	At        time.Time     // event time of the failure
	Seq       uint64
}

func (f *StoreFailure) encode(e enc) enc {
	p := byte(0)
	if f.Permanent {
		p = 1
	}
	return e.b(recordV1).s(f.Reason).i(f.Attempts).b(p).i(int64(f.RetryIn)).t(f.At).u(f.Seq)
}

func decodeStoreFailure(objectID, tier string, b []byte) (*StoreFailure, error) {
	d := dec{b: b}
	d.start()
	f := &StoreFailure{ObjectID: objectID, Tier: tier}
	f.Reason, f.Attempts = d.s(), d.i()
	switch d.byte() {
	case 0:
	case 1:
		f.Permanent = true
	default:
		d.fail()
	}
	f.RetryIn, f.At, f.Seq = time.Duration(d.i()), d.t(), d.u()
	return f, d.done("store failure", objectID+"/"+tier)
}

// Count is a number of files and their total size.
type Count struct {
	Files uint64 `json:"files"`
	Bytes uint64 `json:"bytes"`
}

// Stats summarises the catalog. It is maintained by Apply and derived only
// from events, so a replay reproduces it.
type Stats struct {
	Seq           uint64           `json:"seq"`
	ByState       map[string]Count `json:"by_state"`
	Files         uint64           `json:"files"`
	Versions      uint64           `json:"versions"`
	Objects       uint64           `json:"objects"`
	Copies        uint64           `json:"copies"`         // good copies
	CorruptCopies uint64           `json:"corrupt_copies"` // copies marked corrupt
	Pins          uint64           `json:"pins"`
	Skipped       uint64           `json:"skipped"` // unknown or invalid events
}

// stats is the fixed-layout form of Stats kept in memory and on disk.
type stats struct {
	files         [numStates]Count
	versions      uint64
	objects       uint64
	copies        uint64
	corruptCopies uint64
	pins          uint64
	skipped       uint64
}

func (s *stats) public(seq uint64) Stats {
	out := Stats{Seq: seq, ByState: make(map[string]Count, numStates), Versions: s.versions,
		Objects: s.objects, Copies: s.copies, CorruptCopies: s.corruptCopies, Pins: s.pins, Skipped: s.skipped}
	for _, st := range States() {
		out.ByState[st.String()] = s.files[st]
		out.Files += s.files[st].Files
	}
	return out
}

func (s *stats) addFile(f *File, sign int) {
	if f == nil || int(f.State) >= numStates {
		return
	}
	c := &s.files[f.State]
	size := uint64(max(f.Stat.Size, 0))
	if sign > 0 {
		c.Files++
		c.Bytes += size
	} else {
		c.Files--
		c.Bytes -= size
	}
}

func (s *stats) addCopy(c *Copy, sign int) {
	if c == nil {
		return
	}
	n := &s.copies
	if c.State == CopyCorrupt {
		n = &s.corruptCopies
	}
	if sign > 0 {
		*n++
	} else {
		*n--
	}
}

// --- binary encoding --------------------------------------------------------
//
// Values are a record version byte followed by fields in a fixed order:
// unsigned integers as uvarints, signed ones as zigzag varints, strings as a
// uvarint length and the bytes, times as zigzag varint Unix nanoseconds (0 for
// the zero time). The encoding is a pure function of the record, so equal
// records give equal bytes.

const recordV1 = 1

var errCorrupt = errors.New("catalog: corrupt record")

type enc []byte

func (e enc) u(v uint64) enc    { return binary.AppendUvarint(e, v) }
func (e enc) i(v int64) enc     { return binary.AppendVarint(e, v) }
func (e enc) s(v string) enc    { return append(binary.AppendUvarint(e, uint64(len(v))), v...) }
func (e enc) b(v byte) enc      { return append(e, v) }
func (e enc) t(v time.Time) enc { return e.i(timeNS(v)) }

func timeNS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (e enc) stat(s *events.FileStat) enc {
	return e.i(s.Size).u(uint64(s.Mode)).u(uint64(s.UID)).u(uint64(s.GID)).
		i(s.AtimeNS).i(s.MtimeNS).i(s.CtimeNS).u(s.Dev).u(s.Inode).u(s.Generation)
}

type dec struct {
	b   []byte
	err error
}

func (d *dec) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
	d.b = nil
}

func (d *dec) u() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) u32() uint32 {
	v := d.u()
	if v > 1<<32-1 {
		d.fail()
		return 0
	}
	return uint32(v)
}

func (d *dec) i() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) s() string {
	n := d.u()
	if n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	v := string(d.b[:n])
	d.b = d.b[n:]
	return v
}

func (d *dec) byte() byte {
	if len(d.b) == 0 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) t() time.Time {
	ns := d.i()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func (d *dec) stat(s *events.FileStat) {
	s.Size = d.i()
	s.Mode = d.u32()
	s.UID = d.u32()
	s.GID = d.u32()
	s.AtimeNS = d.i()
	s.MtimeNS = d.i()
	s.CtimeNS = d.i()
	s.Dev = d.u()
	s.Inode = d.u()
	s.Generation = d.u()
}

// start checks the record version byte.
func (d *dec) start() {
	if d.byte() != recordV1 {
		d.fail()
	}
}

// done reports an error if the record was short, long or malformed.
func (d *dec) done(what, key string) error {
	if d.err == nil && len(d.b) != 0 {
		d.err = errCorrupt
	}
	if d.err != nil {
		return fmt.Errorf("%w: %s %q", d.err, what, key)
	}
	return nil
}

func (f *File) encode(e enc) enc {
	e = e.b(recordV1).s(f.Host).s(f.Path).s(f.Root).b(byte(f.State)).stat(&f.Stat)
	return e.s(f.ObjectID).u(uint64(f.Version)).u(f.Recalls).u(f.RecallFailures).u(f.Seq).t(f.Updated)
}

func decodeFile(id string, b []byte) (*File, error) {
	d := dec{b: b}
	d.start()
	f := &File{ID: id, Host: d.s(), Path: d.s(), Root: d.s(), State: State(d.byte())}
	d.stat(&f.Stat)
	f.ObjectID, f.Version, f.Recalls, f.RecallFailures, f.Seq, f.Updated = d.s(), d.u32(), d.u(), d.u(), d.u(), d.t()
	if f.State == 0 || int(f.State) >= numStates {
		d.fail()
	}
	return f, d.done("file", id)
}

func (v *Version) encode(e enc) enc {
	e = e.b(recordV1).s(v.ObjectID).s(v.Path).stat(&v.Stat)
	return e.i(v.PackedSize).s(v.PackedSum).i(v.FrameSize).i(v.Frames).t(v.ArchivedAt).u(v.Seq)
}

func decodeVersion(fileID string, n uint32, b []byte) (Version, error) {
	d := dec{b: b}
	d.start()
	v := Version{FileID: fileID, Number: n, ObjectID: d.s(), Path: d.s()}
	d.stat(&v.Stat)
	v.PackedSize, v.PackedSum, v.FrameSize, v.Frames, v.ArchivedAt, v.Seq = d.i(), d.s(), d.i(), d.i(), d.t(), d.u()
	return v, d.done("version", fmt.Sprintf("%s/%d", fileID, n))
}

func (o *Object) encode(e enc) enc {
	return e.b(recordV1).i(o.Size).i(o.PackedSize).s(o.PackedSum).i(o.FrameSize).i(o.Frames).
		s(o.Staging).t(o.PackedAt).u(o.Seq)
}

func decodeObject(id string, b []byte) (*Object, error) {
	d := dec{b: b}
	d.start()
	o := &Object{ID: id}
	o.Size, o.PackedSize, o.PackedSum, o.FrameSize, o.Frames = d.i(), d.i(), d.s(), d.i(), d.i()
	o.Staging, o.PackedAt, o.Seq = d.s(), d.t(), d.u()
	return o, d.done("object", id)
}

func (c *Copy) encode(e enc) enc {
	e = e.b(recordV1).s(c.TierKind).s(c.Location).i(c.Size).i(c.PackedSize).s(c.PackedSum)
	if c.Tape != nil {
		e = e.b(1).s(c.Tape.Volume).i(c.Tape.TapeFile).i(c.Tape.Block).i(c.Tape.Offset)
	} else {
		e = e.b(0)
	}
	return e.b(byte(c.State)).s(c.Reason).t(c.StoredAt).t(c.VerifiedAt).u(c.Seq)
}

func decodeCopy(objectID, tier string, b []byte) (*Copy, error) {
	d := dec{b: b}
	d.start()
	c := &Copy{ObjectID: objectID, Tier: tier}
	c.TierKind, c.Location, c.Size, c.PackedSize, c.PackedSum = d.s(), d.s(), d.i(), d.i(), d.s()
	switch d.byte() {
	case 0:
	case 1:
		c.Tape = &events.TapePosition{Volume: d.s(), TapeFile: d.i(), Block: d.i(), Offset: d.i()}
	default:
		d.fail()
	}
	c.State, c.Reason, c.StoredAt, c.VerifiedAt, c.Seq = CopyState(d.byte()), d.s(), d.t(), d.t(), d.u()
	if c.State != CopyGood && c.State != CopyCorrupt {
		d.fail()
	}
	return c, d.done("copy", objectID+"/"+tier)
}

func (s *stats) encode(e enc) enc {
	e = e.b(recordV1)
	for st := 1; st < numStates; st++ {
		e = e.u(s.files[st].Files).u(s.files[st].Bytes)
	}
	return e.u(s.versions).u(s.objects).u(s.copies).u(s.corruptCopies).u(s.pins).u(s.skipped)
}

func decodeStats(b []byte) (stats, error) {
	var s stats
	d := dec{b: b}
	d.start()
	for st := 1; st < numStates; st++ {
		s.files[st] = Count{Files: d.u(), Bytes: d.u()}
	}
	s.versions, s.objects, s.copies, s.corruptCopies, s.pins, s.skipped = d.u(), d.u(), d.u(), d.u(), d.u(), d.u()
	return s, d.done("stats", "")
}
