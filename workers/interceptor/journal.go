//go:build linux

package interceptor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The journal of work in flight: a file mapped MAP_SHARED, so that a store
// into it lands in the page cache at once and survives the death of this
// process (not a power loss: nothing here is fsynced — after a power loss
// no program is left waiting anyway). It has two tables:
//
//   - event slots, indexed by the number of an event's fd: written before
//     the event is handled (in flight), turned into the answer just before
//     it is written (answering), cleared after. A daemon that takes over
//     the group from a holder handles every slot still in flight (an
//     orphan: its fd number is what the kernel matches replies against)
//     and writes every answer still recorded again, before its first read:
//     the kernel refuses it if the first went through (ENOENT), and no new
//     event can hold the number yet.
//   - fill slots: a segment (a run of holes of one chunk) whose bytes are
//     being stored, from before its pages are faulted in until the store
//     is complete, or until a failed store was punched back. A process
//     killed in between leaves a half-written segment whose written pages
//     are data (zeros past the copy point, since pages are faulted in
//     writable before the copy): recall would take them for filled bytes.
//     The next recall of that stub punches such segments back to holes
//     first. A slot never covers bytes that are not being stored (data
//     the file held before, pages a program was already let go on): the
//     punch must not destroy what a program may have written there.
//
// Layout: a 4 KiB header, then journalEventSlots × eventSlotSize, then
// journalFillSlots × fillSlotSize. Fields are native-endian.

const (
	journalName       = "inflight"
	journalMagic      = "STRATA-INFLIGHT1"
	journalHeader     = 4096
	journalEventSlots = 1 << 16
	eventSlotSize     = 256
	journalFillSlots  = 4096
	fillSlotSize      = 128
	journalSize       = journalHeader + journalEventSlots*eventSlotSize + journalFillSlots*fillSlotSize
	maxHandleBytes    = 128
	slotInFlight      = 1
	slotAnswering     = 2 // event slots only: the answer at b[200:204] is being written
)

// orphan is an event a previous daemon read but did not answer.
type orphan struct {
	fd          int
	seq         uint64
	mask        uint64
	dev, ino    uint64
	hasRange    bool
	off, count  int64
	mountID     int32
	handleType  int32
	handleBytes []byte
}

// partialFill is a segment a previous process was writing when it died.
type partialFill struct {
	slot   int
	fileID string
	off, n int64
	// mtimeNS is the file's mtime before the store began (0: not
	// recorded): a store stamps it on ext4, and a process killed mid-store
	// cannot put it back; the next one does.
	mtimeNS int64
}

type journal struct {
	f   *os.File
	m   []byte
	seq atomic.Uint64

	mu struct {
		sync.Mutex
		freeFills []int                      // fill slots not in use
		partial   map[inodeKey][]partialFill // left by a dead process, not yet punched
	}
}

// openJournal opens (or creates) dir/inflight and reads what a previous
// process left in it.
func openJournal(dir string) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal dir: %w", err)
	}
	path := filepath.Join(dir, journalName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	// One daemon per journal: a second one would take the first's events
	// for orphans. The lock dies with the process.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock journal %s (another daemon uses it?): %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open journal: %w", err)
	}
	fresh := fi.Size() == 0
	if !fresh && fi.Size() != journalSize {
		f.Close()
		return nil, fmt.Errorf("open journal %s: size %d, want %d", path, fi.Size(), journalSize)
	}
	if err := f.Truncate(journalSize); err != nil {
		f.Close()
		return nil, fmt.Errorf("size journal: %w", err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, journalSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("map journal: %w", err)
	}
	j := &journal{f: f, m: m}
	if fresh {
		copy(m, journalMagic)
	} else if string(m[:len(journalMagic)]) != journalMagic {
		j.close()
		return nil, fmt.Errorf("open journal %s: bad magic", path)
	}
	j.mu.partial = map[inodeKey][]partialFill{}
	for s := journalFillSlots - 1; s >= 0; s-- {
		b := j.fillSlot(s)
		if j.state(b) != slotInFlight {
			j.mu.freeFills = append(j.mu.freeFills, s)
			continue
		}
		le := binary.NativeEndian
		key := inodeKey{le.Uint64(b[16:24]), le.Uint64(b[24:32])}
		idLen := min(int(b[48]), 64)
		j.mu.partial[key] = append(j.mu.partial[key], partialFill{slot: s, fileID: string(b[56 : 56+idLen]),
			off: int64(le.Uint64(b[32:40])), n: int64(le.Uint64(b[40:48])), mtimeNS: int64(le.Uint64(b[120:128]))})
	}
	// Sequence numbers only tell a slot's writer from a later one: start
	// past every number in the file.
	var maxSeq uint64
	for fd := range journalEventSlots {
		if b := j.eventSlot(fd); j.state(b) != 0 {
			maxSeq = max(maxSeq, binary.NativeEndian.Uint64(b[8:16]))
		}
	}
	j.seq.Store(maxSeq)
	return j, nil
}

func (j *journal) eventSlot(fd int) []byte {
	o := journalHeader + fd*eventSlotSize
	return j.m[o : o+eventSlotSize]
}

func (j *journal) fillSlot(s int) []byte {
	o := journalHeader + journalEventSlots*eventSlotSize + s*fillSlotSize
	return j.m[o : o+fillSlotSize]
}

func (j *journal) state(b []byte) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[0])))
}

func (j *journal) setState(b []byte, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[0])), v)
}

// orphans returns the events still in flight in the journal.
func (j *journal) orphans() []orphan {
	var out []orphan
	le := binary.NativeEndian
	for fd := range journalEventSlots {
		b := j.eventSlot(fd)
		if j.state(b) != slotInFlight {
			continue
		}
		hb := min(int(le.Uint32(b[68:72])), maxHandleBytes)
		out = append(out, orphan{
			fd: fd, seq: le.Uint64(b[8:16]), mask: le.Uint64(b[16:24]),
			dev: le.Uint64(b[24:32]), ino: le.Uint64(b[32:40]),
			off: int64(le.Uint64(b[40:48])), count: int64(le.Uint64(b[48:56])),
			hasRange: b[56] == 1, mountID: int32(le.Uint32(b[60:64])),
			handleType:  int32(le.Uint32(b[64:68])),
			handleBytes: append([]byte(nil), b[72:72+hb]...),
		})
	}
	return out
}

// pendingAnswers returns, by fd number, the answers a previous process
// began to write and may not have written.
func (j *journal) pendingAnswers() map[int]unix.Errno {
	out := map[int]unix.Errno{}
	if j == nil {
		return out
	}
	for fd := range journalEventSlots {
		if b := j.eventSlot(fd); j.state(b) == slotAnswering {
			out[fd] = unix.Errno(binary.NativeEndian.Uint32(b[200:204]))
		}
	}
	return out
}

// forgetEvents clears every event slot: the group they belonged to is gone.
func (j *journal) forgetEvents() {
	for fd := range journalEventSlots {
		if b := j.eventSlot(fd); j.state(b) != 0 {
			j.setState(b, 0)
		}
	}
}

// clearEvent clears the slot of fd, whatever it holds.
func (j *journal) clearEvent(fd int) {
	if j == nil {
		return
	}
	j.mu.Lock()
	j.setState(j.eventSlot(fd), 0)
	j.mu.Unlock()
}

// begin records ev before it is handled and returns the token for end.
// It costs a name_to_handle_at and an fstat; an fd beyond the table is not
// recorded (a recovery would deny it with EIO, see recover.go).
func (j *journal) begin(ev event) uint64 {
	if j == nil || ev.fd < 0 || ev.fd >= journalEventSlots {
		return 0
	}
	var st unix.Stat_t
	if unix.Fstat(ev.fd, &st) != nil {
		return 0
	}
	h, mountID, err := unix.NameToHandleAt(ev.fd, "", unix.AT_EMPTY_PATH)
	if err != nil || len(h.Bytes()) > maxHandleBytes {
		return 0
	}
	seq := j.seq.Add(1)
	b := j.eventSlot(ev.fd)
	le := binary.NativeEndian
	le.PutUint32(b[4:8], uint32(ev.fd))
	le.PutUint64(b[8:16], seq)
	le.PutUint64(b[16:24], ev.mask)
	le.PutUint64(b[24:32], st.Dev)
	le.PutUint64(b[32:40], st.Ino)
	le.PutUint64(b[40:48], uint64(ev.off))
	le.PutUint64(b[48:56], uint64(ev.count))
	b[56] = 0
	if ev.hasRange {
		b[56] = 1
	}
	le.PutUint32(b[60:64], uint32(mountID))
	le.PutUint32(b[64:68], uint32(h.Type()))
	le.PutUint32(b[68:72], uint32(len(h.Bytes())))
	copy(b[72:72+maxHandleBytes], h.Bytes())
	j.setState(b, slotInFlight)
	return seq
}

// answering records errno as the answer to the event of token seq, just
// before it is written. A crash after it leaves a slot that the next daemon
// answers again before its first read (see recoverStart), never an orphan
// whose number a new event could hold by then.
func (j *journal) answering(fd int, seq uint64, errno unix.Errno) {
	if j == nil || seq == 0 || fd < 0 || fd >= journalEventSlots {
		return
	}
	b := j.eventSlot(fd)
	j.mu.Lock()
	if binary.NativeEndian.Uint64(b[8:16]) == seq && j.state(b) == slotInFlight {
		binary.NativeEndian.PutUint32(b[200:204], uint32(errno))
		j.setState(b, slotAnswering)
	}
	j.mu.Unlock()
}

// end clears the slot of fd if it still holds the event of token seq.
// Call it after the answer is written.
func (j *journal) end(fd int, seq uint64) {
	if j == nil || seq == 0 || fd < 0 || fd >= journalEventSlots {
		return
	}
	b := j.eventSlot(fd)
	j.mu.Lock()
	if binary.NativeEndian.Uint64(b[8:16]) == seq {
		j.setState(b, 0)
	}
	j.mu.Unlock()
}

var errJournalFull = errors.New("interceptor: no free fill slot in the journal")

// beginFill records that the holes [off, off+n) of the stub key are about
// to be written. It returns the slot for endFill, or -1 without a journal.
func (j *journal) beginFill(key inodeKey, fileID string, off, n int64) (int, error) {
	if j == nil {
		return -1, nil
	}
	j.mu.Lock()
	if len(j.mu.freeFills) == 0 {
		j.mu.Unlock()
		return -1, errJournalFull
	}
	s := j.mu.freeFills[len(j.mu.freeFills)-1]
	j.mu.freeFills = j.mu.freeFills[:len(j.mu.freeFills)-1]
	j.mu.Unlock()
	b := j.fillSlot(s)
	le := binary.NativeEndian
	le.PutUint64(b[16:24], key.dev)
	le.PutUint64(b[24:32], key.ino)
	le.PutUint64(b[32:40], uint64(off))
	le.PutUint64(b[40:48], uint64(n))
	id := fileID[:min(len(fileID), 64)]
	b[48] = byte(len(id))
	copy(b[56:120], id)
	binary.NativeEndian.PutUint64(b[120:128], 0)
	j.setState(b, slotInFlight)
	return s, nil
}

// setFillMtime records in fill slot s the file's mtime before its store
// (bytes 120-128; 0 in a journal of an older version).
func (j *journal) setFillMtime(s int, ns int64) {
	if j == nil || s < 0 {
		return
	}
	binary.NativeEndian.PutUint64(j.fillSlot(s)[120:128], uint64(ns))
}

// endFill clears a fill slot once its stores are all done (or failed
// without storing: an empty slot is harmless either way).
func (j *journal) endFill(s int) {
	if j == nil || s < 0 {
		return
	}
	j.setState(j.fillSlot(s), 0)
	j.mu.Lock()
	j.mu.freeFills = append(j.mu.freeFills, s)
	j.mu.Unlock()
}

// takePartial returns the segments of key a dead process left half
// written. The caller punches them, then calls endFill for each slot (or
// keepPartial for those it could not punch).
func (j *journal) takePartial(key inodeKey) []partialFill {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.mu.partial[key]
	delete(j.mu.partial, key)
	return p
}

// keepPartial gives back partial fills of key that takePartial returned
// and the caller could not punch: the next recall of key gets them again.
func (j *journal) keepPartial(key inodeKey, p []partialFill) {
	if j == nil || len(p) == 0 {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.mu.partial[key] = append(j.mu.partial[key], p...)
}

func (j *journal) close() {
	if j == nil {
		return
	}
	unix.Munmap(j.m)
	j.f.Close()
}
