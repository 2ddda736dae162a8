package tape

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Cartridge describes an emulated cartridge, kept in cartridge.json in its
// directory beside the records (data) and their index (index).
type Cartridge struct {
	Capacity       int64 `json:"capacity"`      // physical end, data bytes
	EarlyWarning   int64 `json:"early_warning"` // bytes before Capacity where early warning starts
	WriteProtected bool  `json:"write_protected"`
}

// Validate checks c.
func (c Cartridge) Validate() error {
	if c.Capacity <= 0 {
		return fmt.Errorf("cartridge: capacity %d must be > 0", c.Capacity)
	}
	if c.EarlyWarning < 0 || c.EarlyWarning >= c.Capacity {
		return fmt.Errorf("cartridge: early warning %d must be in [0, capacity)", c.EarlyWarning)
	}
	return nil
}

const (
	cartridgeFile = "cartridge.json"
	dataFile      = "data"
	indexFile     = "index"
	indexEntry    = 16 // int64 offset, int64 length (-1: filemark)
)

// CreateCartridge makes a blank emulated cartridge in dir (created; it
// must not hold a cartridge already).
func CreateCartridge(dir string, c Cartridge) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create cartridge %s: %w", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, cartridgeFile)); err == nil {
		return fmt.Errorf("create cartridge %s: %w", dir, os.ErrExist)
	}
	for _, f := range []string{dataFile, indexFile} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			return fmt.Errorf("create cartridge %s: %w", dir, err)
		}
	}
	return writeCartridgeMeta(dir, c)
}

func writeCartridgeMeta(dir string, c Cartridge) error {
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("cartridge %s: %w", dir, err)
	}
	tmp := filepath.Join(dir, cartridgeFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("cartridge %s: %w", dir, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, cartridgeFile)); err != nil {
		return fmt.Errorf("cartridge %s: %w", dir, err)
	}
	return nil
}

// SetWriteProtect flips the write-protect tab of the cartridge in dir
// (while it is not in a drive).
func SetWriteProtect(dir string, on bool) error {
	c, err := readCartridgeMeta(dir)
	if err != nil {
		return err
	}
	c.WriteProtected = on
	return writeCartridgeMeta(dir, c)
}

func readCartridgeMeta(dir string) (Cartridge, error) {
	b, err := os.ReadFile(filepath.Join(dir, cartridgeFile))
	if err != nil {
		return Cartridge{}, fmt.Errorf("read cartridge %s: %w", dir, err)
	}
	var c Cartridge
	if err := json.Unmarshal(b, &c); err != nil {
		return Cartridge{}, fmt.Errorf("read cartridge %s: %w", dir, err)
	}
	return c, c.Validate()
}

// record is one logical object on tape: a data record or a filemark.
type record struct {
	off  int64  // data offset of the record (for filemarks: of the next record)
	n    int64  // length, -1 for a filemark
	data []byte // non-nil while the record is only in the volatile drive buffer
}

func (r record) filemark() bool { return r.n < 0 }

func (r record) end() int64 {
	if r.n < 0 {
		return r.off
	}
	return r.off + r.n
}

// cartridge is a loaded emulated cartridge.
type cartridge struct {
	dir  string
	meta Cartridge
	data *os.File
	idx  *os.File
	recs []record
	// INVARIANT: recs[:disk] have their data and index entry on disk;
	// recs[disk:] are volatile (data != nil). idxLen entries are in the
	// index file; entries past disk may be stale records that a later
	// volatile overwrite has not reached yet, as old data on a real
	// medium survives until the drive writes over it.
	disk          int
	idxLen        int
	volatileBytes int64
}

func openCartridge(dir string) (*cartridge, error) {
	meta, err := readCartridgeMeta(dir)
	if err != nil {
		return nil, err
	}
	data, err := os.OpenFile(filepath.Join(dir, dataFile), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open cartridge %s: %w", dir, err)
	}
	idx, err := os.OpenFile(filepath.Join(dir, indexFile), os.O_RDWR, 0)
	if err != nil {
		data.Close()
		return nil, fmt.Errorf("open cartridge %s: %w", dir, err)
	}
	raw, err := io.ReadAll(idx)
	if err != nil {
		data.Close()
		idx.Close()
		return nil, fmt.Errorf("open cartridge %s: %w", dir, err)
	}
	c := &cartridge{dir: dir, meta: meta, data: data, idx: idx}
	var off int64
	for i := 0; i+indexEntry <= len(raw); i += indexEntry {
		r := record{off: int64(binary.LittleEndian.Uint64(raw[i:])), n: int64(binary.LittleEndian.Uint64(raw[i+8:]))}
		if r.off != off || r.n < -1 {
			data.Close()
			idx.Close()
			return nil, fmt.Errorf("open cartridge %s: index entry %d corrupt", dir, i/indexEntry)
		}
		off = r.end()
		c.recs = append(c.recs, r)
	}
	c.disk, c.idxLen = len(c.recs), len(c.recs)
	return c, nil
}

// spill writes volatile record i (the oldest) to disk.
func (c *cartridge) spill() error {
	i := c.disk
	r := c.recs[i]
	if r.n > 0 {
		if _, err := c.data.WriteAt(r.data, r.off); err != nil {
			return fmt.Errorf("cartridge %s: write data: %w", c.dir, err)
		}
	}
	var e [indexEntry]byte
	binary.LittleEndian.PutUint64(e[:], uint64(r.off))
	binary.LittleEndian.PutUint64(e[8:], uint64(r.n))
	if _, err := c.idx.WriteAt(e[:], int64(i)*indexEntry); err != nil {
		return fmt.Errorf("cartridge %s: write index: %w", c.dir, err)
	}
	if c.idxLen > i+1 {
		if err := c.idx.Truncate(int64(i+1) * indexEntry); err != nil {
			return fmt.Errorf("cartridge %s: truncate index: %w", c.dir, err)
		}
	}
	c.idxLen = i + 1
	if r.n > 0 {
		c.volatileBytes -= r.n
	}
	c.recs[i].data = nil
	c.disk++
	return nil
}

// flush makes every record durable.
func (c *cartridge) flush() error {
	if c.disk == len(c.recs) && c.idxLen == len(c.recs) {
		return nil
	}
	for c.disk < len(c.recs) {
		if err := c.spill(); err != nil {
			return err
		}
	}
	if c.idxLen > len(c.recs) {
		if err := c.idx.Truncate(int64(len(c.recs)) * indexEntry); err != nil {
			return fmt.Errorf("cartridge %s: truncate index: %w", c.dir, err)
		}
		c.idxLen = len(c.recs)
	}
	if err := c.data.Sync(); err != nil {
		return fmt.Errorf("cartridge %s: sync: %w", c.dir, err)
	}
	if err := c.idx.Sync(); err != nil {
		return fmt.Errorf("cartridge %s: sync: %w", c.dir, err)
	}
	return nil
}

func (c *cartridge) close() error {
	err1 := c.data.Close()
	err2 := c.idx.Close()
	return errors.Join(err1, err2)
}

// truncate drops records from i on (a write at i).
func (c *cartridge) truncate(i int) {
	for j := i; j < len(c.recs); j++ {
		if c.recs[j].data != nil && c.recs[j].n > 0 {
			c.volatileBytes -= c.recs[j].n
		}
	}
	c.recs = c.recs[:i]
	if c.disk > i {
		c.disk = i
	}
}

// Stats are the emulator's counters.
type Stats struct {
	Backhitches  int   // underruns while writing
	Flushes      int   // flushing filemarks (each stops the drive)
	Locates      int   // repositionings (rewind, seek, space, reads out of place)
	BytesWritten int64 // data bytes written
	BytesRead    int64 // data bytes read
	// FirstWrite is the virtual time of the first data write (-1: none).
	FirstWrite time.Duration
}

// Emulator is a file-backed tape drive, faithful to st in variable block
// mode, with a virtual clock (see Model). A cartridge is a directory made
// by CreateCartridge; Insert loads it. Like a real drive it is meant for
// one user at a time; its methods are nevertheless safe for concurrent use
// so that tests can read Stats and Now while a writer runs.
type Emulator struct {
	model Model

	mu struct {
		sync.Mutex
		now       time.Duration
		stats     Stats
		cart      *cartridge // nil: no cartridge in the drive
		loaded    bool       // cartridge threaded (online)
		pos       int        // index of the next record
		head      int64      // data offset under the head
		blockSize int
		lastWrite bool // last operation was a data write
		// Early warning, as st: after the write that crosses it, writes
		// alternately fail with ENOSPC and succeed.
		ewFailNext bool
		ewZone     bool
		// Streaming model.
		streaming   bool
		busyUntil   time.Duration
		window      []arrival
		windowBytes int64
		// Injected errors.
		failRead  map[int]bool
		failWrite int // the failWrite-th next write fails (0: none)
	}
}

type arrival struct {
	at time.Duration
	n  int64
}

var _ Drive = (*Emulator)(nil)

// NewEmulator returns an empty drive with the given model.
func NewEmulator(m Model) (*Emulator, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	e := &Emulator{model: m}
	e.mu.failRead = map[int]bool{}
	e.mu.stats.FirstWrite = -1
	return e, nil
}

// OpenEmulator returns a drive with the cartridge in dir loaded.
func OpenEmulator(dir string, m Model) (*Emulator, error) {
	e, err := NewEmulator(m)
	if err != nil {
		return nil, err
	}
	if err := e.Insert(dir); err != nil {
		return nil, err
	}
	return e, nil
}

// Model returns the drive's timing model.
func (e *Emulator) Model() Model { return e.model }

// Now returns the virtual time elapsed since the drive was created.
func (e *Emulator) Now() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mu.now
}

// Advance moves the virtual clock forward by d: the host spent d doing
// something else (a producer simulates its speed this way).
func (e *Emulator) Advance(d time.Duration) {
	if d <= 0 {
		return
	}
	e.mu.Lock()
	e.mu.now += d
	e.mu.Unlock()
}

// Stats returns the counters.
func (e *Emulator) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mu.stats
}

// FailReadAt makes the next read of logical block b fail with ErrMedium.
func (e *Emulator) FailReadAt(b int64) {
	e.mu.Lock()
	e.mu.failRead[int(b)] = true
	e.mu.Unlock()
}

// FailWrite makes the n-th next data write fail with ErrMedium (n >= 1).
func (e *Emulator) FailWrite(n int) {
	e.mu.Lock()
	e.mu.failWrite = n
	e.mu.Unlock()
}

// Insert puts the cartridge in dir into the drive and loads it (at BOT).
func (e *Emulator) Insert(dir string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.cart != nil {
		return fmt.Errorf("insert %s: drive holds %s: %w", dir, e.mu.cart.dir, syscall.EBUSY)
	}
	c, err := openCartridge(dir)
	if err != nil {
		return err
	}
	e.mu.cart = c
	e.loadLocked()
	return nil
}

func (e *Emulator) loadLocked() {
	e.mu.loaded = true
	e.mu.now += e.model.LoadTime
	e.mu.pos, e.mu.head = 0, 0
	e.mu.lastWrite = false
	e.mu.streaming = false
	e.mu.ewFailNext, e.mu.ewZone = false, false
}

// Eject unloads and removes the cartridge (the drive is then empty).
func (e *Emulator) Eject() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.cart == nil {
		return nil
	}
	err := e.unloadLocked()
	err = errors.Join(err, e.mu.cart.close())
	e.mu.cart = nil
	return err
}

// PowerLoss simulates a power cut: records still in the volatile drive
// buffer are lost, and the drive comes back empty (re-Insert the
// cartridge to read what survived).
func (e *Emulator) PowerLoss() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.cart == nil {
		return nil
	}
	err := e.mu.cart.close()
	e.mu.cart = nil
	e.mu.loaded = false
	e.mu.lastWrite = false
	return err
}

func (e *Emulator) readyLocked() error {
	if e.mu.cart == nil || !e.mu.loaded {
		return ErrNoTape
	}
	return nil
}

// moveLocked repositions to record i: the drive writes its buffer first
// and stops streaming.
func (e *Emulator) moveLocked(i int) error {
	c := e.mu.cart
	if err := e.flushBufferLocked(false); err != nil {
		return err
	}
	target := e.offsetLocked(i)
	if d := e.model.locate(e.mu.head, target, c.meta.Capacity); d > 0 {
		e.mu.now += d
		e.mu.stats.Locates++
	}
	e.mu.head = target
	e.mu.pos = i
	e.mu.lastWrite = false
	return nil
}

func (e *Emulator) offsetLocked(i int) int64 {
	recs := e.mu.cart.recs
	if i < len(recs) {
		return recs[i].off
	}
	if len(recs) == 0 {
		return 0
	}
	return recs[len(recs)-1].end()
}

// flushBufferLocked waits for the drive to write its buffer, makes every
// record durable and stops the drive.
func (e *Emulator) flushBufferLocked(filemark bool) error {
	if e.mu.busyUntil > e.mu.now {
		e.mu.now = e.mu.busyUntil
	}
	if filemark {
		e.mu.now += e.model.FlushTime
		e.mu.stats.Flushes++
	}
	e.mu.streaming = false
	e.mu.window, e.mu.windowBytes = e.mu.window[:0], 0
	return e.mu.cart.flush()
}

// WriteBlock writes one record (see Drive).
func (e *Emulator) WriteBlock(p []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.writeLocked(p)
}

func (e *Emulator) writeLocked(p []byte) error {
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("write block: %w", err)
	}
	c := e.mu.cart
	if c.meta.WriteProtected {
		return fmt.Errorf("write block: %w", ErrWriteProtected)
	}
	if len(p) == 0 {
		return fmt.Errorf("write block: empty record: %w", syscall.EINVAL)
	}
	if e.mu.blockSize > 0 && len(p)%e.mu.blockSize != 0 {
		return fmt.Errorf("write block: %d bytes in fixed %d-byte block mode: %w", len(p), e.mu.blockSize, syscall.EINVAL)
	}
	if e.mu.failWrite > 0 {
		e.mu.failWrite--
		if e.mu.failWrite == 0 {
			return fmt.Errorf("write block %d: injected: %w", e.mu.pos, ErrMedium)
		}
	}
	off := e.offsetLocked(e.mu.pos)
	n := int64(len(p))
	if off+n > c.meta.Capacity {
		return fmt.Errorf("write block %d: physical end of medium: %w", e.mu.pos, ErrNoSpace)
	}
	ew := c.meta.Capacity - c.meta.EarlyWarning
	if off+n <= ew {
		e.mu.ewZone, e.mu.ewFailNext = false, false
	} else if e.mu.ewZone {
		if e.mu.ewFailNext {
			e.mu.ewFailNext = false
			return fmt.Errorf("write block %d: early warning: %w", e.mu.pos, ErrNoSpace)
		}
		e.mu.ewFailNext = true
	} else {
		e.mu.ewZone, e.mu.ewFailNext = true, true
	}
	if e.mu.head != off {
		// Writing elsewhere than under the head: locate first.
		if err := e.moveLocked(e.mu.pos); err != nil {
			return fmt.Errorf("write block: %w", err)
		}
	}
	e.timeWriteLocked(n)
	if e.mu.stats.FirstWrite < 0 {
		e.mu.stats.FirstWrite = e.mu.now
	}
	c.truncate(e.mu.pos)
	c.recs = append(c.recs, record{off: off, n: n, data: append([]byte(nil), p...)})
	c.volatileBytes += n
	for c.volatileBytes > e.model.Buffer {
		if err := c.spill(); err != nil {
			return fmt.Errorf("write block: %w", err)
		}
	}
	e.mu.pos++
	e.mu.head = off + n
	e.mu.lastWrite = true
	e.mu.stats.BytesWritten += n
	return nil
}

// timeWriteLocked advances the clock for a write of n bytes arriving now.
func (e *Emulator) timeWriteLocked(n int64) {
	m := e.model
	now := e.mu.now
	switch {
	case !e.mu.streaming:
		e.mu.streaming = true
		e.mu.busyUntil = now
		e.mu.window, e.mu.windowBytes = e.mu.window[:0], 0
	case now > e.mu.busyUntil:
		// The buffer ran dry at full speed. Speed matching covers the gap
		// if data kept arriving at MinRate or faster over the last Buffer
		// bytes.
		matched := false
		if len(e.mu.window) > 0 {
			span := now - e.mu.window[0].at
			if span > 0 && float64(e.mu.windowBytes)/span.Seconds() >= m.MinRate {
				matched = true
			}
		}
		if matched {
			e.mu.busyUntil = now
		} else {
			e.mu.stats.Backhitches++
			e.mu.busyUntil = now + m.Backhitch
			e.mu.window, e.mu.windowBytes = e.mu.window[:0], 0
		}
	}
	// Wait for room in the drive buffer.
	pending := int64(float64(e.mu.busyUntil-now) / float64(time.Second) * m.Rate)
	if pending+n > m.Buffer {
		now += m.xfer(pending + n - m.Buffer)
		e.mu.now = now
	}
	e.mu.busyUntil += m.xfer(n)
	e.mu.window = append(e.mu.window, arrival{at: now, n: n})
	e.mu.windowBytes += n
	for len(e.mu.window) > 1 && e.mu.windowBytes-e.mu.window[0].n >= m.Buffer {
		e.mu.windowBytes -= e.mu.window[0].n
		e.mu.window = e.mu.window[1:]
	}
}

// WriteFilemarks writes n filemarks (see Drive).
func (e *Emulator) WriteFilemarks(n int, flush bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.writeFilemarksLocked(n, flush)
}

func (e *Emulator) writeFilemarksLocked(n int, flush bool) error {
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("write filemark: %w", err)
	}
	c := e.mu.cart
	if c.meta.WriteProtected {
		return fmt.Errorf("write filemark: %w", ErrWriteProtected)
	}
	if n < 0 {
		return fmt.Errorf("write filemark: count %d: %w", n, syscall.EINVAL)
	}
	off := e.offsetLocked(e.mu.pos)
	if n > 0 && off > c.meta.Capacity {
		return fmt.Errorf("write filemark: physical end of medium: %w", ErrNoSpace)
	}
	if n > 0 && e.mu.head != off {
		if err := e.moveLocked(e.mu.pos); err != nil {
			return fmt.Errorf("write filemark: %w", err)
		}
	}
	for range n {
		c.truncate(e.mu.pos)
		c.recs = append(c.recs, record{off: off, n: -1, data: []byte{}})
		e.mu.pos++
	}
	e.mu.lastWrite = false
	if flush {
		if err := e.flushBufferLocked(true); err != nil {
			return fmt.Errorf("write filemark: %w", err)
		}
	}
	return nil
}

// ReadBlock reads one record (see Drive).
func (e *Emulator) ReadBlock(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return 0, fmt.Errorf("read block: %w", err)
	}
	c := e.mu.cart
	i := e.mu.pos
	if i >= len(c.recs) {
		return 0, fmt.Errorf("read block %d: %w", i, ErrEndOfData)
	}
	r := c.recs[i]
	if e.mu.head != r.off || e.mu.lastWrite || e.mu.streaming {
		if err := e.moveLocked(i); err != nil {
			return 0, fmt.Errorf("read block: %w", err)
		}
	}
	e.mu.pos = i + 1
	e.mu.head = r.end()
	if e.mu.failRead[i] {
		delete(e.mu.failRead, i)
		return 0, fmt.Errorf("read block %d: injected: %w", i, ErrMedium)
	}
	if r.filemark() {
		return 0, nil
	}
	e.mu.now += e.model.xfer(r.n)
	if r.n > int64(len(p)) {
		return 0, fmt.Errorf("read block %d: %d-byte record, %d-byte buffer: %w", i, r.n, len(p), ErrShortBuffer)
	}
	if r.data != nil {
		copy(p, r.data)
	} else if _, err := c.data.ReadAt(p[:r.n], r.off); err != nil {
		return 0, fmt.Errorf("read block %d: %w: %w", i, ErrMedium, err)
	}
	e.mu.stats.BytesRead += r.n
	return int(r.n), nil
}

// SpaceFilemarks spaces over filemarks (see Drive).
func (e *Emulator) SpaceFilemarks(n int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("space filemarks: %w", err)
	}
	recs := e.mu.cart.recs
	i := e.mu.pos
	switch {
	case n > 0:
		for ; n > 0; i++ {
			if i >= len(recs) {
				if err := e.moveLocked(len(recs)); err != nil {
					return err
				}
				return fmt.Errorf("space forward: %w", ErrEndOfData)
			}
			if recs[i].filemark() {
				n--
			}
		}
	case n < 0:
		for ; n < 0; n++ {
			i--
			for i >= 0 && !recs[i].filemark() {
				i--
			}
			if i < 0 {
				if err := e.moveLocked(0); err != nil {
					return err
				}
				return fmt.Errorf("space back: %w", ErrBeginningOfTape)
			}
		}
	}
	return e.moveLocked(i)
}

// Locate moves to logical block b (see Drive).
func (e *Emulator) Locate(b int64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("locate: %w", err)
	}
	if b < 0 || b > int64(len(e.mu.cart.recs)) {
		return fmt.Errorf("locate %d: %w", b, ErrEndOfData)
	}
	if int(b) == e.mu.pos && !e.mu.lastWrite {
		return nil
	}
	return e.moveLocked(int(b))
}

// Tell returns the logical block number.
func (e *Emulator) Tell() (int64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return 0, fmt.Errorf("tell: %w", err)
	}
	return int64(e.mu.pos), nil
}

// Rewind moves to BOT.
func (e *Emulator) Rewind() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("rewind: %w", err)
	}
	return e.rewindLocked()
}

func (e *Emulator) rewindLocked() error {
	if err := e.flushBufferLocked(false); err != nil {
		return err
	}
	_, l := e.model.phys(e.mu.head, e.mu.cart.meta.Capacity)
	e.mu.now += e.model.RewindTime + time.Duration(l*float64(e.model.EndToEnd))
	e.mu.pos, e.mu.head = 0, 0
	e.mu.lastWrite = false
	return nil
}

// EndOfData moves to end of data.
func (e *Emulator) EndOfData() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("end of data: %w", err)
	}
	return e.moveLocked(len(e.mu.cart.recs))
}

// Status reports the drive state.
func (e *Emulator) Status() (Status, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.cart == nil {
		return Status{DoorOpen: true, File: -1, Block: -1}, nil
	}
	c := e.mu.cart
	s := Status{
		Online:         e.mu.loaded,
		WriteProtected: c.meta.WriteProtected,
		BlockSize:      e.mu.blockSize,
		File:           -1,
		Block:          -1,
	}
	if !e.mu.loaded {
		return s, nil
	}
	i := e.mu.pos
	s.BOT = i == 0
	s.EOD = i == len(c.recs)
	s.EOF = i > 0 && c.recs[i-1].filemark()
	s.EOT = e.offsetLocked(i) > c.meta.Capacity-c.meta.EarlyWarning
	s.File, s.Block = 0, 0
	for j := range i {
		if c.recs[j].filemark() {
			s.File++
			s.Block = 0
		} else {
			s.Block++
		}
	}
	return s, nil
}

// Load loads the cartridge in the drive (after Unload).
func (e *Emulator) Load() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.cart == nil {
		return fmt.Errorf("load: %w", ErrNoTape)
	}
	if !e.mu.loaded {
		e.loadLocked()
	}
	return nil
}

// Unload rewinds and unthreads the cartridge (it stays in the drive
// until Eject; Load threads it again).
func (e *Emulator) Unload() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("unload: %w", err)
	}
	return e.unloadLocked()
}

func (e *Emulator) unloadLocked() error {
	if !e.mu.loaded {
		return nil
	}
	if e.mu.lastWrite {
		if err := e.writeFilemarksLocked(1, true); err != nil {
			return err
		}
	}
	if err := e.rewindLocked(); err != nil {
		return err
	}
	e.mu.now += e.model.UnloadTime
	e.mu.loaded = false
	return nil
}

// SetBlockSize sets the block size (0: variable).
func (e *Emulator) SetBlockSize(n int) error {
	if n < 0 {
		return fmt.Errorf("set block size %d: %w", n, syscall.EINVAL)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("set block size: %w", err)
	}
	e.mu.blockSize = n
	return nil
}

// SetCompression is accepted and ignored (the emulator stores bytes as
// given).
func (e *Emulator) SetCompression(on bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.readyLocked(); err != nil {
		return fmt.Errorf("set compression: %w", err)
	}
	return nil
}

// Close writes a filemark if the last operation was a data write (as st
// does), writes the drive buffer out and releases the cartridge files.
// The drive keeps power: only PowerLoss drops buffered records.
func (e *Emulator) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.cart == nil {
		return nil
	}
	var err error
	if e.mu.loaded && e.mu.lastWrite && !e.mu.cart.meta.WriteProtected {
		err = e.writeFilemarksLocked(1, true)
	}
	err = errors.Join(err, e.mu.cart.flush(), e.mu.cart.close())
	e.mu.cart = nil
	e.mu.loaded = false
	return err
}

// Library is a changer over emulated cartridges: one drive and the
// directories of the cartridges by barcode (volume id).
type Library struct {
	Drive *Emulator
	Slots map[string]string // barcode → cartridge directory
}

// Mount ejects whatever the drive holds and loads the cartridge volume.
func (l *Library) Mount(_ context.Context, volume string) (Drive, error) {
	dir, ok := l.Slots[volume]
	if !ok {
		return nil, fmt.Errorf("mount %s: no such cartridge in the library: %w", volume, ErrNoTape)
	}
	if err := l.Drive.Eject(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", volume, err)
	}
	if err := l.Drive.Insert(dir); err != nil {
		return nil, fmt.Errorf("mount %s: %w", volume, err)
	}
	return l.Drive, nil
}

// Dismount unloads and ejects the cartridge.
func (l *Library) Dismount(_ context.Context, _ string) error { return l.Drive.Eject() }
