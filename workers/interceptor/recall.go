//go:build linux

package interceptor

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stub"
)

type chunkState uint8

const (
	chunkEmpty chunkState = iota
	chunkFilling
	chunkFilled
)

// fillOp is one chunk fill in flight; done is closed when it ends.
type fillOp struct {
	done chan struct{}
	err  error
	// first: the part fillChunkFirst stores before the rest of the chunk
	// (nil otherwise). Set before the fill starts, under recall.mu; once
	// signalled its pages are verified data that stays (head-only serves
	// them, rules.go).
	first *firstPart
}

// fillError says which bytes a failed fill was for.
type fillError struct {
	off, n int64
	err    error
}

func (e *fillError) Error() string {
	return fmt.Sprintf("fill bytes %d-%d: %v", e.off, e.off+e.n, e.err)
}
func (e *fillError) Unwrap() error { return e.err }

// recall is the state of one stub being recalled.
type recall struct {
	in   *Interceptor
	key  inodeKey
	info stub.Info
	// fd is a dup of the first event's fd: O_RDWR, raises no event. Every
	// use of it after newRecall is bracketed by useFD and doneFD; finish
	// closes it once the file is whole, after the last use (its number
	// may name another file the moment it is closed).
	fd      int
	fdIdle  *sync.Cond // on mu: fdUsers dropped to 0
	path    string
	pid     int32
	process string
	exe     string // the executable of pid, read at the first event
	start   time.Time
	chunk   int64
	// firstAnswered: the first program access of this recall was
	// answered (Config.OnFirstByte reported it).
	firstAnswered atomic.Bool
	// blk is the filesystem's block size: holes, and so punches, are
	// whole blocks.
	blk int64
	// nocm is -1, or a fd of the file with FMODE_NOCMTIME (XFS, mode
	// pre-access; see openNoCmtime): stores and punches go through it and
	// leave mtime alone, so no stat ever sees it move. Without it every
	// store moves mtime (the kernel stamps it at the first write fault)
	// until storeSegs puts it back. Closed with fd.
	nocm int
	// storeMu makes the stores into this file one at a time (fills still
	// read and verify in parallel): concurrent page faults on one inode
	// contend in the filesystem (XFS: measured slower than one at a time).
	storeMu sync.Mutex
	// serialBackground: the background fills of this stub run one at a
	// time. Measured on XFS (docs/BENCHMARKS-hotpath.md): a sequential
	// reader of a 1 GiB stub finished in 0.64-0.74 s with one background
	// fill per stub and in 0.78-0.94 s with two, while on ext4 two were
	// faster (0.84 s against 0.97-1.12 s).
	serialBackground bool

	mu struct {
		sync.Mutex
		// INVARIANT: limit <= info.Size and never grows. No fill writes at
		// or past limit once a truncate lowered it and was allowed.
		limit int64
		state []chunkState // one per chunk of info.Size
		ops   map[int64]*fillOp
		// INVARIANT: nfilled counts chunks below nchunks(limit) in state
		// chunkFilled.
		nfilled int64
		// ours[k]: chunk k was one hole when this recall filled it, and
		// its fill stored all of it. Only a program can have changed such
		// a chunk since (every access to a chunk waits for its fill).
		ours []bool
		// unclean holds, by chunk, segments a failed fill stored and could
		// not punch back: the chunk's next fill punches them first.
		unclean   map[int64][][2]int64
		cursor    int64 // next chunk the background filler looks at
		bgRunning bool
		// done: every chunk below the limit is filled and finish has
		// started (finishing) or ended. A finish that fails to prove the
		// content (holes, bytes that are not the object's) clears it, so
		// that the fill that completes the recall again starts another;
		// one that fails after the proof (sync, xattrs) leaves it set, and
		// the recall is finished by a restarted daemon.
		done bool
		// finishing: a finish runs; at most one does (completeLocked
		// starts one only when none runs). finishEnd is closed when it
		// ends.
		finishing bool
		finishEnd chan struct{}
		// proven: a finish proved the file is the object (or, truncated,
		// whole); it is archived and unmarked, or about to be.
		proven    bool
		bytes     int64
		tier      string
		truncated bool
		fdUsers   int
		fdClosed  bool
		// part: how the stub is accessed, what the background fills
		// (read-ahead or the whole file) and whether this recall was
		// dropped while idle (partial.go).
		part partialState
	}
}

func newRecall(in *Interceptor, ev event, key inodeKey, st *unix.Stat_t, info stub.Info) (*recall, error) {
	fd, err := unix.FcntlInt(uintptr(ev.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup event fd: %w", err)
	}
	r := &recall{
		in: in, key: key, info: info, fd: fd, path: fdPath(fd), pid: ev.pid, process: comm(ev.pid),
		exe: exePath(ev.pid), start: time.Now(), chunk: in.cfg.ChunkSize, nocm: -1,
	}
	r.fdIdle = sync.NewCond(&r.mu.Mutex)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("statfs stub: %w", err)
	}
	r.serialBackground = sfs.Type == unix.XFS_SUPER_MAGIC
	r.blk = max(int64(sfs.Bsize), 512)
	r.mu.limit = min(info.Size, st.Size)
	r.mu.truncated = r.mu.limit < info.Size
	r.mu.state = make([]chunkState, r.nchunks(info.Size))
	r.mu.ours = make([]bool, len(r.mu.state))
	r.mu.ops = map[int64]*fillOp{}
	r.mu.unclean = map[int64][][2]int64{}
	// Segments a dead process was storing may hold pages it had faulted
	// in but not yet copied to (zeros that look like data): punch them
	// back to holes. Nothing else wrote there: every access to a chunk
	// being filled waits for the fill, and a slot covers only a segment
	// being stored (pages a program was let go on are not in one).
	partial := in.jr.takePartial(key)
	for i, p := range partial {
		if p.fileID == info.FileID[:min(len(info.FileID), 64)] {
			if err := r.punch(p.off, p.off+p.n); err != nil {
				in.jr.keepPartial(key, partial[i:]) // the next recall punches them
				unix.Close(fd)
				return nil, fmt.Errorf("punch bytes %d-%d left half written by a crash: %w", p.off, p.off+p.n, err)
			}
			in.log.Warn("punched bytes a crashed fill left half written", "path", r.path, "off", p.off, "len", p.n)
			// A punch moves mtime, and so did the store the crash cut
			// short (ext4): put back the mtime from before that store; a
			// recall must not look like a modification.
			mt := st.Mtim
			if p.mtimeNS != 0 {
				mt = unix.NsecToTimespec(p.mtimeNS)
			}
			restoreMtime(fd, mt)
		}
		in.jr.endFill(p.slot)
	}
	// Chunks that hold only data are filled already: by a daemon before a
	// crash, or by the user after that. They are never written again.
	err = dataSegments(fd, 0, r.mu.limit, func(s, e int64) {
		for k := (s + r.chunk - 1) / r.chunk; k*r.chunk < e; k++ {
			if min((k+1)*r.chunk, r.mu.limit) <= e {
				r.mu.state[k] = chunkFilled
				r.mu.nfilled++
			}
		}
	})
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("scan data of stub: %w", err)
	}
	if sfs.Type == unix.XFS_SUPER_MAGIC && in.mode == ModePreAccess {
		if nfd, err := openNoCmtime(fd, filepath.Dir(r.path)); err == nil {
			r.nocm = nfd
		} else {
			in.log.Debug("no fd that keeps mtime; fills put it back after each store", "path", r.path, "err", err)
		}
	}
	return r, nil
}

// storeFD is the fd that fills store and punch through.
func (r *recall) storeFD() int {
	if r.nocm >= 0 {
		return r.nocm
	}
	return r.fd
}

// selfAccess lets the events raised by an access to [lo, hi) through
// storeFD through at once (only nocm raises any); call the result after.
func (r *recall) selfAccess(lo, hi int64) (done func()) {
	if r.nocm < 0 {
		return func() {}
	}
	return r.in.selfAccess(r.key, lo, hi)
}

func (r *recall) nchunks(size int64) int64 { return (size + r.chunk - 1) / r.chunk }

// useFD starts a use of r.fd. It reports false once finish has closed it:
// the file was proved whole and is archived, there is nothing to fill.
func (r *recall) useFD() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.fdClosed || r.mu.part.dropped {
		return false
	}
	r.mu.fdUsers++
	return true
}

// doneFD ends a use of r.fd started by useFD.
func (r *recall) doneFD() {
	r.mu.Lock()
	if r.mu.fdUsers--; r.mu.fdUsers == 0 {
		r.fdIdle.Broadcast()
	}
	r.mu.Unlock()
}

// closeFD closes r.fd (and nocm) after its last use; no use starts after
// it. Once is enough: later calls do nothing.
func (r *recall) closeFD() {
	r.mu.Lock()
	if r.mu.fdClosed {
		r.mu.Unlock()
		return
	}
	r.mu.fdClosed = true
	for r.mu.fdUsers > 0 {
		r.fdIdle.Wait()
	}
	r.mu.Unlock()
	unix.Close(r.fd)
	if r.nocm >= 0 {
		unix.Close(r.nocm)
	}
}

// checkComplete marks the recall done if every chunk below the limit is
// filled, and reports whether this call did so (the caller then runs
// finish).
func (r *recall) checkComplete() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.completeLocked()
}

func (r *recall) completeLocked() bool {
	if r.mu.done || r.mu.finishing || r.mu.nfilled != r.nchunks(r.mu.limit) {
		return false
	}
	r.mu.done = true
	r.mu.finishing = true
	r.mu.finishEnd = make(chan struct{})
	return true
}

// awaitProof returns once a finish has proved the file (or failed after
// its proof, for a cause that leaves the content whole: sync, xattrs),
// filling again what a failed proof left to fill, up to 3 times. A
// whole-file recall at open waits for it: the program must not go on
// before the content is proven (in mode open-perm its reads raise no
// event) nor while the recall holds a writable fd (exec).
func (r *recall) awaitProof(ctx context.Context) error {
	for try := 0; ; {
		r.mu.Lock()
		finishing, end, done, proven, limit := r.mu.finishing, r.mu.finishEnd, r.mu.done, r.mu.proven, r.mu.limit
		r.mu.Unlock()
		if finishing {
			select {
			case <-end:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		if proven || done {
			return nil
		}
		if try++; try > 3 {
			return errors.New("recalled file could not be proven to be its object")
		}
		if err := r.ensure(ctx, 0, limit); err != nil {
			return err
		}
	}
}

// ensure returns once every byte of [lo, hi) below the limit is filled, or
// with the error of a fill it needed.
func (r *recall) ensure(ctx context.Context, lo, hi int64) error {
	if !r.useFD() {
		return r.droppedErr() // nil: proved whole, nothing to fill
	}
	defer r.doneFD()
	r.reopenHoles(lo, hi)
	r.mu.Lock()
	hi = min(hi, r.mu.limit)
	if r.mu.done || lo >= hi || lo < 0 {
		r.mu.Unlock()
		return nil
	}
	var mine []int64
	var mineOps, waits []*fillOp
	for k := lo / r.chunk; k <= (hi-1)/r.chunk; k++ {
		switch r.mu.state[k] {
		case chunkFilling:
			waits = append(waits, r.mu.ops[k])
		case chunkEmpty:
			if r.residentLocked(k, lo, hi) {
				continue // the bytes wanted of it are there (a resident head)
			}
			op := r.claimLocked(k)
			mine, mineOps = append(mine, k), append(mineOps, op)
		}
	}
	r.mu.Unlock()

	var firstErr error
	for j, k := range mine {
		if firstErr != nil {
			r.release(k, mineOps[j], firstErr)
			continue
		}
		firstErr = r.fillChunkFirst(ctx, k, mineOps[j], lo, hi)
	}
	for _, op := range waits {
		<-op.done
		if op.err != nil && firstErr == nil {
			firstErr = op.err
		}
	}
	return firstErr
}

// reopenHoles makes chunks of [lo, hi) that were counted filled but hold a
// hole again fillable. A chunk is counted filled when it held data as the
// recall began; a punch that lands after that (a release racing with the
// first access) must not leave it counted: its reader would get zeros. One
// lseek when nothing is wrong.
func (r *recall) reopenHoles(lo, hi int64) {
	r.mu.Lock()
	limit := r.mu.limit
	r.mu.Unlock()
	hi = min(hi, limit)
	if lo >= hi {
		return
	}
	if h, err := unix.Seek(r.fd, lo, unix.SEEK_HOLE); err != nil || h >= hi {
		return
	}
	holes, err := holeSegments(r.fd, lo, hi)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range holes {
		for k := h[0] / r.chunk; k*r.chunk < h[1]; k++ {
			if r.mu.state[k] == chunkFilled {
				r.in.log.Warn("a chunk counted filled is a hole again; filling it", "path", r.path, "chunk", k)
				r.mu.state[k] = chunkEmpty
				r.mu.nfilled--
				r.mu.done = false
			}
		}
	}
}

func (r *recall) claimLocked(k int64) *fillOp {
	op := &fillOp{done: make(chan struct{})}
	r.mu.state[k] = chunkFilling
	r.mu.ops[k] = op
	r.in.stats.filling.Add(1)
	return op
}

// release gives back a claimed chunk without filling it.
func (r *recall) release(k int64, op *fillOp, err error) {
	r.mu.Lock()
	r.mu.state[k] = chunkEmpty
	delete(r.mu.ops, k)
	r.mu.Unlock()
	r.in.stats.filling.Add(-1)
	op.err = err
	close(op.done)
}

// firstPart is the part of a chunk that a held program waits for: it is
// stored first, and stored is closed as soon as it is.
type firstPart struct {
	lo, hi int64 // page-aligned, within the chunk
	stored chan struct{}
	once   sync.Once
}

// signal says the pages of f are stored. It is called only then.
func (f *firstPart) signal() {
	if f != nil {
		f.once.Do(func() { close(f.stored) })
	}
}

func (f *firstPart) isStored() bool {
	if f == nil {
		return false
	}
	select {
	case <-f.stored:
		return true
	default:
		return false
	}
}

// fillChunkFirst fills chunk k, which the caller claimed, for a program
// that waits for bytes [lo, hi). When those bytes cover only part of the
// chunk, the chunk is read and verified whole, the pages of [lo, hi) are
// stored first and fillChunkFirst returns; the rest of the chunk is stored
// right after by a goroutine, which completes op (every other access to
// the chunk waits for op, as for any fill). So a program waits for the
// verification of the whole chunk (the Source verifies whole frames) but
// not for the store of pages it does not need. Otherwise it is fillChunk.
func (r *recall) fillChunkFirst(ctx context.Context, k int64, op *fillOp, lo, hi int64) error {
	s := k * r.chunk
	r.mu.Lock()
	e := min(s+r.chunk, r.mu.limit)
	r.mu.Unlock()
	// Whole pages, and whole blocks: a block shared by the first part and
	// the rest could not be punched back if the rest failed.
	align := max(4096, r.blk)
	plo, phi := max(lo, s)/align*align, min((min(hi, e)+align-1)/align*align, e)
	if plo <= s && phi >= e || plo >= phi {
		return r.fillChunk(ctx, k, op, nil)
	}
	fp := &firstPart{lo: plo, hi: phi, stored: make(chan struct{})}
	r.mu.Lock()
	r.mu.fdUsers++ // useFD: the caller (ensure) holds a use, so it is open
	op.first = fp
	r.mu.Unlock()
	r.in.work.Add(1)
	go func() {
		defer r.in.work.Done()
		err := r.fillChunk(ctx, k, op, fp)
		r.doneFD()
		if err != nil && fp.isStored() && ctx.Err() == nil {
			// The program that waited got its bytes; the rest of the
			// chunk is filled by the next access (it is empty again).
			r.failBackground(err)
		}
	}()
	// fp is signalled only once its pages are stored (never on failure);
	// op completes after that, so once op is done, fp tells whether they
	// were.
	select {
	case <-fp.stored:
		return nil
	case <-op.done:
	}
	if fp.isStored() {
		return nil
	}
	return op.err // nil when there was nothing to store (data, or truncated away)
}

// fillChunk fills the holes of chunk k, which the caller claimed, and
// completes op. With fp, the pages of fp are stored first (see
// fillChunkFirst). The chunk is counted filled only when every hole of it
// was stored whole with the Source's verified bytes; a fill that fails
// leaves the chunk empty and, of what it stored, only the pages a program
// was already let go on (fp): the rest is punched back to holes before the
// error is returned (see storeSegs).
func (r *recall) fillChunk(ctx context.Context, k int64, op *fillOp, fp *firstPart) error {
	var tier string
	var wrote int64
	var err error
	all := true // every byte of the chunk was a hole this recall stored
	s := k * r.chunk
	for {
		r.mu.Lock()
		e := min(s+r.chunk, r.mu.limit)
		r.mu.Unlock()
		if e <= s {
			break
		}
		var w int64
		var whole bool
		tier, w, whole, err = r.fillRange(ctx, k, s, e, fp)
		wrote += w
		all = all && whole
		if !errors.Is(err, errTruncated) {
			break
		}
		var st unix.Stat_t
		if err = unix.Fstat(r.fd, &st); err != nil {
			break
		}
		r.sawSize(st.Size)
	}
	if err != nil {
		e := s + r.chunk
		err = &fillError{off: s, n: e - s, err: err}
		r.mu.Lock()
		r.mu.bytes += wrote // pages a program was let go on stay, and count
		r.mu.Unlock()
		r.release(k, op, err)
		return err
	}
	r.mu.Lock()
	r.mu.state[k] = chunkFilled
	r.mu.ours[k] = all
	delete(r.mu.ops, k)
	r.in.stats.filling.Add(-1)
	if k < r.nchunks(r.mu.limit) {
		r.mu.nfilled++
	}
	r.mu.bytes += wrote
	if tier != "" {
		r.mu.tier = tier
	}
	complete := r.completeLocked()
	r.mu.Unlock()
	close(op.done)
	if complete {
		r.in.work.Add(1)
		go r.finish()
	}
	return nil
}

// fillRange writes the verified content into the holes of [s, e), which
// lie in chunk k. With fp, the holes within fp are stored first and fp is
// signalled, then the others. Nothing is stored before the whole of
// [s, e) is verified. It returns the bytes that stay stored (on error:
// those of fp, once signalled) and whether [s, e) was one hole.
//
// The bytes are stored through a shared mapping of the file, not with
// pwrite: a store past EOF faults instead of extending the file, so a fill
// racing with a truncate the kernel has already allowed can never bring
// truncated bytes back (a truncate to a size that is not page-aligned
// reaches the interceptor as an ordinary 4 KiB access, indistinguishable
// from a write). A fault at or past EOF lowers the limit to the file's
// size and reports errTruncated; the caller retries with the new limit. A
// fault below EOF is a block that could not be allocated (ENOSPC, EDQUOT):
// see storeSegs.
func (r *recall) fillRange(ctx context.Context, k, s, e int64, fp *firstPart) (tier string, wrote int64, whole bool, err error) {
	if err := r.punchUnclean(k); err != nil {
		return "", 0, false, err
	}
	holes, err := holeSegments(r.fd, s, e)
	if err != nil {
		return "", 0, false, fmt.Errorf("find holes: %w", err)
	}
	if len(holes) == 0 {
		return "", 0, false, nil
	}
	whole = len(holes) == 1 && holes[0] == [2]int64{s, e}
	bp := r.in.bufs.Get().(*[]byte)
	defer r.in.bufs.Put(bp)
	buf := (*bp)[:e-s]
	tier, err = r.in.src.ReadVerified(ctx, r.info, buf, s)
	if err != nil {
		return "", 0, false, fmt.Errorf("source: %w", err)
	}
	r.in.stats.fills.Add(1)
	r.storeMu.Lock()
	defer r.storeMu.Unlock()
	mapped := r.selfAccess(s, e)
	m, err := unix.Mmap(r.storeFD(), s, int(e-s), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	mapped()
	if err != nil {
		return "", 0, false, fmt.Errorf("map stub at %d: %w", s, err)
	}
	defer unix.Munmap(m)
	rest := holes
	if fp != nil {
		var first [][2]int64
		first, rest = splitSegments(holes, fp.lo, fp.hi)
		w, err := r.storeSegs(k, m, s, buf, first)
		if err != nil {
			return "", 0, false, err
		}
		wrote += w
		fp.signal()
	}
	w, err := r.storeSegs(k, m, s, buf, rest)
	if err != nil {
		return "", wrote, false, err
	}
	wrote += w
	r.in.stats.filledBytes.Add(uint64(wrote))
	return tier, wrote, whole, nil
}

// storeSegs copies the bytes of segs (holes of the range that m maps from
// file offset s, and buf holds) into the file, and returns how many it
// stored. The caller holds storeMu.
//
// Each segment is journaled while it is stored (a process killed mid-copy
// leaves the next daemon the segment to punch, see journal.go), and the
// file's mtime is put back after each store: a recall is not a
// modification (page faults stamp it).
//
// INVARIANT: a store that fails leaves holes, never data. A store faults
// (SIGBUS) when a page cannot be written: past EOF, or below EOF when the
// filesystem cannot allocate its block (full disk, quota). By then the
// segment holds data that is not the object's: pages faulted in writable
// ahead of the copy are allocated zeros, pages written back and
// write-protected again fault earlier than the copy reached, and a copy
// need not store in address order (Go's memmove stores the head of a large
// copy last on some CPUs). Counted as filled, or skipped by the next fill
// as data, they would be read as the file's bytes. So every segment of
// segs is punched back to a hole (block-aligned: holes are whole blocks)
// before the error is returned, and a segment whose punch failed is
// punched again before the chunk's next fill.
func (r *recall) storeSegs(k int64, m []byte, s int64, buf []byte, segs [][2]int64) (int64, error) {
	var wrote int64
	for i, h := range segs {
		var before unix.Stat_t
		if err := unix.Fstat(r.fd, &before); err != nil {
			r.punchSegs(k, segs[:i])
			return 0, fmt.Errorf("stat stub: %w", err)
		}
		slot, err := r.in.jr.beginFill(r.key, r.info.FileID, h[0], h[1]-h[0])
		if err != nil {
			r.punchSegs(k, segs[:i])
			return 0, err
		}
		r.in.jr.setFillMtime(slot, before.Mtim.Nano()) // a kill mid-store leaves it stamped (ext4): the next recall puts it back
		for try := 0; ; try++ {
			// Fault the pages in writable with one call (fewer faults
			// than the copy would take, measured); a page that cannot be
			// written shows up in copyFaulting.
			_ = unix.Madvise(m[(h[0]-s)/4096*4096:h[1]-s], unix.MADV_POPULATE_WRITE)
			at, ok := copyFaulting(m[h[0]-s:h[1]-s], buf[h[0]-s:h[1]-s])
			if ok {
				break
			}
			ferr := r.faultCause(h[0]+at, h[1])
			if ferr == nil && try == 0 {
				continue // the rest of the segment is allocated now: copy it again
			}
			if ferr == nil {
				ferr = &faultError{off: h[0] + at, err: errors.New("faulted again once its blocks were allocated")}
			}
			if !errors.Is(ferr, errTruncated) {
				r.in.failpoint(FailStoreFaulted, r.pid)
			}
			r.punchSegs(k, segs[:i+1])
			r.restoreMtime(before.Mtim)
			r.in.jr.endFill(slot) // after the punch: a kill before it leaves the slot to the next daemon
			return 0, ferr
		}
		r.restoreMtime(before.Mtim)
		r.in.jr.endFill(slot)
		wrote += h[1] - h[0]
	}
	return wrote, nil
}

// faultError is a store that faulted below EOF.
type faultError struct {
	off int64
	err error
}

func (e *faultError) Error() string {
	return fmt.Sprintf("store faulted at byte %d below EOF: %v", e.off, e.err)
}
func (e *faultError) Unwrap() error { return e.err }

// faultCause says why a store faulted at byte off of a segment that ends
// at end: errTruncated if off is at or past EOF (the limit is lowered to
// the size); else it allocates the blocks of [off, end) (fallocate, which
// returns the errno a page fault cannot: ENOSPC, EDQUOT) and returns that
// error, or nil once they are allocated. A delayed allocation at a page fault can fail where this one
// does not (XFS reserves room for the extent tree too, measured): the
// caller then copies again, into blocks that need no allocation. The
// blocks lie in the segment being stored, which the caller punches if it
// fails.
func (r *recall) faultCause(off, end int64) error {
	var st unix.Stat_t
	if err := unix.Fstat(r.fd, &st); err != nil {
		return fmt.Errorf("stat stub after a fault at %d: %w", off, err)
	}
	if off >= st.Size {
		// The limit comes down to the size seen here, not to a size seen
		// later: the file may have been extended again since, and bytes
		// past the truncate must not come back.
		r.sawSize(st.Size)
		return errTruncated
	}
	a, b := off/r.blk*r.blk, (end+r.blk-1)/r.blk*r.blk
	done := r.selfAccess(a, b)
	err := unix.Fallocate(r.storeFD(), unix.FALLOC_FL_KEEP_SIZE, a, b-a)
	done()
	if err != nil {
		return &faultError{off: off, err: fmt.Errorf("allocate bytes %d-%d: %w", a, b, err)}
	}
	return nil
}

// punchSegs punches the segments of chunk k back to holes and puts the
// mtime back. A segment that still holds data after it (the punch failed)
// is kept in r.mu.unclean: the chunk's next fill punches it first.
func (r *recall) punchSegs(k int64, segs [][2]int64) {
	if len(segs) == 0 {
		return
	}
	var before unix.Stat_t
	haveMtime := unix.Fstat(r.fd, &before) == nil
	var left [][2]int64
	for _, h := range segs {
		if err := r.punch(h[0], h[1]); err != nil {
			r.in.log.Error("punch back bytes a failed fill stored", "path", r.path, "off", h[0], "len", h[1]-h[0], "err", err)
			left = append(left, h)
		}
	}
	if haveMtime {
		r.restoreMtime(before.Mtim)
	}
	if len(left) > 0 {
		r.mu.Lock()
		r.mu.unclean[k] = append(r.mu.unclean[k], left...)
		r.mu.Unlock()
	}
}

// punch frees the blocks of [lo, hi) (rounded out to whole blocks) and
// checks that no data is left there.
func (r *recall) punch(lo, hi int64) error {
	a, b := lo/r.blk*r.blk, (hi+r.blk-1)/r.blk*r.blk
	done := r.selfAccess(a, b)
	err := unix.Fallocate(r.storeFD(), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, a, b-a)
	done()
	if err != nil {
		return fmt.Errorf("punch %d-%d: %w", a, b, err)
	}
	d, err := unix.Seek(r.fd, a, unix.SEEK_DATA)
	if err == nil && d < min(b, hi) {
		return fmt.Errorf("punch %d-%d: data left at %d", a, b, d)
	}
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("punch %d-%d: seek data: %w", a, b, err)
	}
	return nil
}

// punchUnclean punches the segments of chunk k an earlier failed fill
// could not punch.
func (r *recall) punchUnclean(k int64) error {
	r.mu.Lock()
	segs := r.mu.unclean[k]
	delete(r.mu.unclean, k)
	r.mu.Unlock()
	if len(segs) == 0 {
		return nil
	}
	r.punchSegs(k, segs)
	r.mu.Lock()
	_, left := r.mu.unclean[k]
	r.mu.Unlock()
	if left {
		return fmt.Errorf("bytes %d-%d a failed fill stored could not be punched", segs[0][0], segs[len(segs)-1][1])
	}
	return nil
}

// splitSegments splits segs into their parts inside [lo, hi) and outside.
func splitSegments(segs [][2]int64, lo, hi int64) (in, out [][2]int64) {
	for _, h := range segs {
		a, b := max(h[0], lo), min(h[1], hi)
		if a >= b {
			out = append(out, h)
			continue
		}
		in = append(in, [2]int64{a, b})
		if h[0] < a {
			out = append(out, [2]int64{h[0], a})
		}
		if b < h[1] {
			out = append(out, [2]int64{b, h[1]})
		}
	}
	return in, out
}

var errTruncated = errors.New("stub truncated during fill")

// restoreMtime sets the file's mtime back to mtim, leaving atime alone,
// after a store or punch through r.fd. Through nocm nothing moved it, and
// nothing is put back: a program's write keeps its stamp.
func (r *recall) restoreMtime(mtim unix.Timespec) {
	if r.nocm < 0 {
		restoreMtime(r.fd, mtim)
	}
}

func restoreMtime(fd int, mtim unix.Timespec) {
	ts := []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, mtim}
	_ = unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
}

// copyFaulting copies src into the mapped dst and reports false if a store
// faulted (SIGBUS), with the offset in dst of the faulting address (0 if
// unknown).
func copyFaulting(dst, src []byte) (at int64, ok bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if p := recover(); p != nil {
			ok = false
			if f, isFault := p.(interface{ Addr() uintptr }); isFault {
				a := int64(f.Addr()) - int64(uintptr(unsafe.Pointer(unsafe.SliceData(dst))))
				if a >= 0 && a < int64(len(dst)) {
					at = a
				}
			}
		}
	}()
	copy(dst, src)
	return 0, true
}

// lowerLimit makes x the limit if it is lower, and recounts the chunks.
func (r *recall) lowerLimitLocked(x int64) {
	if x >= r.mu.limit {
		return
	}
	r.mu.limit = max(x, 0)
	r.mu.truncated = true
	r.mu.nfilled = 0
	for k := range r.nchunks(r.mu.limit) {
		if r.mu.state[k] == chunkFilled {
			r.mu.nfilled++
		}
	}
}

// sawSize lowers the limit to the file's size as seen at an event: a file
// truncated (and perhaps extended again) since must not get the truncated
// bytes back.
func (r *recall) sawSize(size int64) {
	r.mu.Lock()
	r.lowerLimitLocked(size)
	complete := r.completeLocked()
	r.mu.Unlock()
	if complete {
		r.in.work.Add(1)
		go r.finish()
	}
}

// tail returns the range of the chunk that holds the last byte below the
// limit when the limit does not end on a block boundary, else an empty
// range. An append (reported at the fd's position, not at EOF) or a write
// past EOF writes into, or zeroes the rest of, that last block: it must be
// filled before such a write is allowed, or the fill would later skip the
// block as data and lose its bytes. A last block that is resident already
// (kept by the release, see stub.Layout) needs nothing.
func (r *recall) tail(blk int64) (lo, hi int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.limit == 0 || r.mu.limit%blk == 0 {
		return 0, 0
	}
	k := (r.mu.limit - 1) / r.chunk
	if r.mu.state[k] == chunkEmpty && r.residentLocked(k, r.mu.limit/blk*blk, r.mu.limit) {
		return 0, 0
	}
	return k * r.chunk, r.mu.limit
}

// truncate handles a truncate to size x: once it returns, no fill writes at
// or past x, so the truncate can be allowed.
func (r *recall) truncate(x int64) {
	r.mu.Lock()
	r.lowerLimitLocked(x)
	var ops []*fillOp
	for _, op := range r.mu.ops {
		ops = append(ops, op)
	}
	r.mu.Unlock()
	for _, op := range ops {
		<-op.done
	}
	if r.checkComplete() {
		r.in.work.Add(1)
		go r.finish()
	}
}

// kick makes sure the background filler runs, starting at the chunk of
// byte from (the read-ahead of the access that ended there).
func (r *recall) kick(from int64) {
	r.mu.Lock()
	if r.mu.done {
		r.mu.Unlock()
		return
	}
	r.mu.cursor = from / r.chunk
	if r.mu.bgRunning {
		r.mu.Unlock()
		return
	}
	r.mu.bgRunning = true
	r.mu.Unlock()
	r.in.work.Add(1)
	go r.background()
}

// background fills the remaining chunks from the cursor on, wrapping
// around, up to Config.BackgroundFills at once (the bound is shared by all
// stubs; one at a time with serialBackground): a sequential reader then
// finds the chunks ahead of it filled or being filled on every core. It
// stops claiming chunks at the first error (the next access retries) and
// when the interceptor closes.
func (r *recall) background() {
	defer r.in.work.Done()
	ctx := r.in.bgCtx
	var stop atomic.Bool
	for {
		select {
		case r.in.bgSem <- struct{}{}:
		case <-ctx.Done():
			r.stopBackground()
			return
		}
		r.mu.Lock()
		k, op := int64(-1), (*fillOp)(nil)
		n := r.nchunks(r.mu.limit)
		if !r.mu.done && !r.mu.fdClosed && !r.mu.part.dropped && !stop.Load() {
			if c := r.nextBackgroundLocked(n); c >= 0 {
				k, op = c, r.claimLocked(c)
				r.mu.cursor = c + 1
			}
		}
		if k < 0 {
			r.mu.bgRunning = false
			r.mu.Unlock()
			<-r.in.bgSem
			return
		}
		r.mu.fdUsers++ // useFD: not closed, checked above
		r.mu.Unlock()
		fill := func() {
			err := r.fillChunk(ctx, k, op, nil)
			r.doneFD()
			<-r.in.bgSem
			if err == nil || !stop.CompareAndSwap(false, true) || ctx.Err() != nil {
				return
			}
			r.failBackground(err)
		}
		if r.serialBackground {
			fill()
			continue
		}
		r.in.work.Add(1)
		go func() {
			defer r.in.work.Done()
			fill()
		}()
	}
}

// failBackground reports a fill that failed with no program waiting for
// it (the bytes it was for, when err says).
func (r *recall) failBackground(err error) {
	f := Failure{FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path, Background: true, Err: err}
	var fe *fillError
	if errors.As(err, &fe) {
		f.Offset, f.Length = fe.off, fe.n
	}
	r.in.fail(f)
}

func (r *recall) stopBackground() {
	r.mu.Lock()
	r.mu.bgRunning = false
	r.mu.Unlock()
}

// finish runs when every chunk below the limit is filled (completeLocked
// starts it, one at a time): it proves that the file is its object, and
// only then the stub becomes archived, loses its mark and the completion
// is reported. It waits for fills still in flight (beyond a truncated
// limit) before closing the fd.
//
// INVARIANT: a stub is archived and unmarked only once its whole content,
// as it is on disk, was read back (through r.fd, which raises no event)
// and found to be the object: its size and BLAKE3 are the object's. A
// chunk that differs and that no program can have written (see prove) is
// punched and filled again; after that fails 3 times the chunks that
// differ are punched, the mark stays and the failure is reported: the
// next access recalls them again. Counting chunks filled is not proof:
// that count was wrong when a failed fill left zeros that looked filled.
//
// The proof reads and hashes the whole file (measured in
// docs/BENCHMARKS-hotpath.md); it runs after the programs that waited for
// fills were answered, except a whole-file recall at open (awaitProof).
func (r *recall) finish() {
	defer r.in.work.Done()
	var ok, keepDone bool
	defer func() { r.endFinish(ok, keepDone) }()
	// Hold a use of r.fd until it is closed below: a recall dropped as
	// stale (its file deleted) closes its fds after their last use, and a
	// number closed under the proof could name another file by then.
	if !r.useFD() {
		return
	}
	using := true
	defer func() {
		if using {
			r.doneFD()
		}
	}()
	r.mu.Lock()
	var ops []*fillOp
	for _, op := range r.mu.ops {
		ops = append(ops, op)
	}
	r.mu.Unlock()
	for _, op := range ops {
		<-op.done
	}
	fail := func(err error) {
		r.in.fail(Failure{FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path, Background: true, Err: err})
	}
	ctx := r.in.bgCtx
	var pr proof
	var proofTime time.Duration
	for attempt := 0; ; attempt++ {
		r.mu.Lock()
		limit := r.mu.limit
		r.mu.Unlock()
		// A chunk counted filled may have been punched after the recall
		// began: fill it (the proof would fail on it anyway).
		holes, err := holeSegments(r.fd, 0, limit)
		if err == nil && len(holes) > 0 && attempt < 3 {
			if err = r.ensure(context.Background(), 0, limit); err == nil {
				continue
			}
		}
		if err == nil && len(holes) > 0 {
			err = fmt.Errorf("holes remain after %d refills", attempt)
		}
		if err != nil {
			// Keep the mark and the recall: later accesses fill what is
			// missing.
			fail(fmt.Errorf("recalled file is not whole: %w", err))
			return
		}
		// The content must be on disk before the state that says so: with
		// delayed allocation a journal commit could otherwise make the
		// state durable while the filled bytes are not, and after a power
		// loss the file would read as holes with no recall to fill them.
		// It also comes before the proof: a write-back that failed may
		// have dropped pages the proof must not find in the cache.
		if err := unix.Fdatasync(r.fd); err != nil {
			// Keep the mark and the recall (every event is allowed at
			// once): a restarted daemon finds every chunk full of data and
			// finishes then.
			keepDone = true
			fail(fmt.Errorf("sync recalled content: %w", err))
			return
		}
		t0 := time.Now()
		pr, err = r.prove(ctx, limit)
		proofTime += time.Since(t0)
		if err != nil {
			keepDone = true // as above: nothing is known to be wrong with the content
			fail(fmt.Errorf("prove recalled content: %w", err))
			return
		}
		if len(pr.bad) == 0 {
			break
		}
		r.in.log.Warn("recalled content differs from its object; filling those chunks again",
			"path", r.path, "chunks", pr.bad, "attempt", attempt+1)
		if attempt == 3 {
			err := r.punchChunks(pr.bad)
			fail(fmt.Errorf("recalled chunks %v differ from the object after %d refills (punched: %v)", pr.bad, attempt, err))
			return
		}
		if err := r.redo(ctx, pr.bad); err != nil {
			fail(fmt.Errorf("fill again chunks that differ from the object: %w", err))
			return
		}
	}
	if pr.modified {
		r.in.log.Warn("recalled file was changed by a program during its recall: it is no longer its object", "path", r.path)
	}
	if err := stub.SetState(r.fd, stub.Archived); err != nil {
		// Keep the mark and the recall (every event is allowed at once):
		// a restarted daemon sees state released, finds every chunk full
		// of data and finishes then.
		keepDone = true
		fail(fmt.Errorf("set stub state archived: %w", err))
		return
	}
	r.in.failpoint(FailInFinish, r.pid)
	r.mu.Lock()
	r.mu.proven = true
	r.mu.Unlock()
	ok = true
	r.in.unguard(r.fd, r.path)
	if err := r.in.g.unmarkFD(r.fd); err != nil && !errors.Is(err, unix.ENOENT) {
		r.in.log.Warn("unmark recalled file", "path", r.path, "err", err)
	}
	r.in.mu.Lock()
	if r.in.mu.recalls[r.key] == r {
		delete(r.in.mu.recalls, r.key)
	}
	r.in.mu.Unlock()
	using = false
	r.doneFD()
	r.closeFD()
	r.mu.Lock()
	c := Completion{
		FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path,
		Bytes: r.mu.bytes, Size: r.mu.limit, Truncated: r.mu.truncated, Modified: pr.modified,
		Duration: time.Since(r.start), Proof: proofTime, Tier: r.mu.tier, PID: r.pid, Process: r.process, Exe: r.exe,
	}
	r.mu.Unlock()
	r.in.stats.completed.Add(1)
	r.in.log.Info("recall completed", "path", c.Path, "file_id", c.FileID, "bytes", c.Bytes,
		"duration", c.Duration, "proof", c.Proof, "tier", c.Tier, "process", c.Process, "modified", c.Modified)
	r.in.pub.completed(c)
	if r.in.cfg.OnComplete != nil {
		r.in.cfg.OnComplete(c)
	}
}

// endFinish ends a finish: ok, it proved and archived the file; keepDone,
// it failed after the content was found whole (the recall stays done:
// nothing to fill, a restarted daemon finishes it). Otherwise the recall
// is not done: the fill that completes it again starts another finish.
func (r *recall) endFinish(ok, keepDone bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !ok && !keepDone {
		r.mu.done = false
	}
	r.mu.finishing = false
	close(r.mu.finishEnd)
}

// proof is what prove found.
type proof struct {
	// modified: a program changed the file during or before this recall
	// (its size is not the object's, or chunks it may have written
	// differ): the file is no longer its object (Completion.Modified).
	modified bool
	// bad are chunks that differ from the object although no program can
	// have written them: a fill's fault.
	bad []int64
}

// prove reads the file (limit bytes of it) back through r.fd and checks
// that it is the object: its size, then its BLAKE3 against the object id.
// If that fails it compares each chunk with the Source's verified bytes
// and sorts the chunks that differ: a chunk this recall filled whole
// (r.mu.ours) can only have changed since by a program's write (every
// access to a chunk waits for its fill, and a store that completed wrote
// the verified bytes); a chunk that held data when the recall began, by a
// write that moved the mtime away from the archived one, if it moved
// (fills keep it, see storeSegs). Others are bad. A truncated file is not
// its object (Completion.Truncated): only its wholeness was checked.
func (r *recall) prove(ctx context.Context, limit int64) (proof, error) {
	var pr proof
	r.mu.Lock()
	truncated := r.mu.truncated
	ours := slices.Clone(r.mu.ours)
	r.mu.Unlock()
	if truncated {
		return pr, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(r.fd, &st); err != nil {
		return pr, fmt.Errorf("stat: %w", err)
	}
	if st.Size != r.info.Size {
		pr.modified = true // fills never change the size
		return pr, nil
	}
	want, err := hex.DecodeString(r.info.ObjectID)
	if err != nil || len(want) != 32 {
		return pr, fmt.Errorf("object id %q is not a BLAKE3-256", r.info.ObjectID)
	}
	sum, err := r.hashFile(ctx, st.Size)
	if err != nil {
		return pr, err
	}
	if bytes.Equal(sum, want) {
		return pr, nil
	}
	moved := st.Mtim.Nano() != r.info.MtimeNS
	disk := r.in.bufs.Get().(*[]byte)
	defer r.in.bufs.Put(disk)
	obj := r.in.bufs.Get().(*[]byte)
	defer r.in.bufs.Put(obj)
	for k := range r.nchunks(st.Size) {
		s, e := k*r.chunk, min((k+1)*r.chunk, st.Size)
		d, o := (*disk)[:e-s], (*obj)[:e-s]
		if err := preadFull(r.fd, d, s); err != nil {
			return pr, fmt.Errorf("read bytes %d-%d: %w", s, e, err)
		}
		if _, err := r.in.src.ReadVerified(ctx, r.info, o, s); err != nil {
			return pr, fmt.Errorf("source bytes %d-%d: %w", s, e, err)
		}
		if bytes.Equal(d, o) {
			continue
		}
		if ours[k] || moved {
			pr.modified = true
		} else {
			pr.bad = append(pr.bad, k)
		}
	}
	if !pr.modified && len(pr.bad) == 0 {
		return pr, fmt.Errorf("the verified bytes of every chunk are on disk but do not hash to object id %s", r.info.ObjectID)
	}
	return pr, nil
}

// hashFile returns the BLAKE3-256 of the first size bytes of the file. It
// reads the next piece while it hashes one (two buffers): reads from the
// page cache take about a fifth of the time (measured).
func (r *recall) hashFile(ctx context.Context, size int64) ([]byte, error) {
	type piece struct {
		b   *[]byte
		n   int64
		err error
	}
	free := make(chan *[]byte, 2)
	for range 2 {
		free <- r.in.bufs.Get().(*[]byte)
	}
	full := make(chan piece, 2)
	go func() {
		defer close(full)
		for off := int64(0); off < size; {
			b := <-free
			n := min(int64(len(*b)), size-off)
			err := ctx.Err()
			if err == nil {
				if err = preadFull(r.fd, (*b)[:n], off); err != nil {
					err = fmt.Errorf("read bytes %d-%d: %w", off, off+n, err)
				}
			}
			full <- piece{b, n, err}
			if err != nil {
				return
			}
			off += n
		}
	}()
	h := blake3.New()
	var err error
	for p := range full {
		if err = cmp.Or(err, p.err); err == nil {
			h.Write((*p.b)[:p.n])
		}
		free <- p.b
	}
	for range 2 { // every buffer is back once full is closed
		r.in.bufs.Put(<-free)
	}
	if err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// preadFull reads all of p at off.
func preadFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(fd, p, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// redo fills chunks ks (filled ones) again: it claims them, so accesses
// to them wait as for any fill, punches them and fills them from the
// Source.
func (r *recall) redo(ctx context.Context, ks []int64) error {
	ops := r.reclaim(ks)
	var first error
	for i, k := range ks {
		if first == nil {
			first = r.punchChunk(k)
		}
		if first != nil {
			r.release(k, ops[i], first)
			continue
		}
		first = r.fillChunk(ctx, k, ops[i], nil)
	}
	return first
}

// punchChunks punches chunks ks (filled ones) back to holes and leaves
// them empty: the next access to them fills them again. Accesses waiting
// meanwhile get the error of the proof.
func (r *recall) punchChunks(ks []int64) error {
	ops := r.reclaim(ks)
	var first error
	for i, k := range ks {
		err := r.punchChunk(k)
		if err != nil {
			// Data that may not be the object's stays: the next fill of
			// the chunk punches it first.
			r.mu.Lock()
			r.mu.unclean[k] = append(r.mu.unclean[k], r.chunkRangeLocked(k))
			r.mu.Unlock()
		}
		first = cmp.Or(first, err)
		r.release(k, ops[i], errors.New("recalled bytes differ from the object"))
	}
	return first
}

// reclaim claims chunks ks, which are filled, for a fill again.
func (r *recall) reclaim(ks []int64) []*fillOp {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := make([]*fillOp, len(ks))
	for i, k := range ks {
		if r.mu.state[k] == chunkFilled && k < r.nchunks(r.mu.limit) {
			r.mu.nfilled--
		}
		r.mu.ours[k] = false
		ops[i] = r.claimLocked(k)
	}
	return ops
}

// punchChunk punches chunk k (claimed) whole back to a hole, keeping the
// mtime.
func (r *recall) punchChunk(k int64) error {
	r.mu.Lock()
	c := r.chunkRangeLocked(k)
	r.mu.Unlock()
	var before unix.Stat_t
	if err := unix.Fstat(r.fd, &before); err != nil {
		return fmt.Errorf("stat stub: %w", err)
	}
	err := r.punch(c[0], c[1])
	r.restoreMtime(before.Mtim)
	return err
}

// chunkRangeLocked returns the bytes of chunk k below the limit.
func (r *recall) chunkRangeLocked(k int64) [2]int64 {
	return [2]int64{k * r.chunk, min((k+1)*r.chunk, r.mu.limit)}
}

// dataSegments calls fn for each data segment of the file within [s, e).
func dataSegments(fd int, s, e int64, fn func(s, e int64)) error {
	pos := s
	for pos < e {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil {
			return err
		}
		if d >= e {
			return nil
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		fn(d, min(h, e))
		pos = h
	}
	return nil
}

// holeSegments returns the holes of the file within [s, e).
func holeSegments(fd int, s, e int64) ([][2]int64, error) {
	var holes [][2]int64
	pos := s
	err := dataSegments(fd, s, e, func(ds, de int64) {
		if ds > pos {
			holes = append(holes, [2]int64{pos, ds})
		}
		pos = de
	})
	if err != nil {
		return nil, err
	}
	if pos < e {
		holes = append(holes, [2]int64{pos, e})
	}
	return holes, nil
}
