//go:build linux

package interceptor

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

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
	start   time.Time
	chunk   int64
	// finished is closed when finish has run (whether it succeeded or not).
	finished chan struct{}
	// finishing makes finish run once: a refill inside finish can complete
	// the recall again and start another.
	finishing sync.Once
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
		nfilled   int64
		cursor    int64 // next chunk the background filler looks at
		bgRunning bool
		done      bool
		bytes     int64
		tier      string
		truncated bool
		fdUsers   int
		fdClosed  bool
	}
}

func newRecall(in *Interceptor, ev event, key inodeKey, st *unix.Stat_t, info stub.Info) (*recall, error) {
	fd, err := unix.FcntlInt(uintptr(ev.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup event fd: %w", err)
	}
	r := &recall{
		in: in, key: key, info: info, fd: fd, path: fdPath(fd), pid: ev.pid, process: comm(ev.pid),
		start: time.Now(), chunk: in.cfg.ChunkSize, finished: make(chan struct{}),
	}
	r.fdIdle = sync.NewCond(&r.mu.Mutex)
	var sfs unix.Statfs_t
	r.serialBackground = unix.Fstatfs(fd, &sfs) == nil && sfs.Type == unix.XFS_SUPER_MAGIC
	r.mu.limit = min(info.Size, st.Size)
	r.mu.truncated = r.mu.limit < info.Size
	r.mu.state = make([]chunkState, r.nchunks(info.Size))
	r.mu.ops = map[int64]*fillOp{}
	// Chunks a dead process was writing may hold pages it had faulted in
	// but not yet copied to (zeros that look like data): punch them back
	// to holes. Nothing else wrote there: every access to a chunk being
	// filled waits for the fill.
	blk := max(int64(st.Blksize), 4096)
	for _, p := range in.jr.takePartial(key) {
		if p.fileID == info.FileID[:min(len(info.FileID), 64)] {
			end := (p.off + p.n + blk - 1) / blk * blk
			if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, p.off, end-p.off); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("punch chunk %d-%d left half written by a crash: %w", p.off, end, err)
			}
			in.log.Warn("punched a chunk a crashed fill left half written", "path", r.path, "off", p.off, "len", p.n)
			restoreMtime(fd, st.Mtim) // a punch moves mtime; a recall must not look like a modification
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
	return r, nil
}

func (r *recall) nchunks(size int64) int64 { return (size + r.chunk - 1) / r.chunk }

// useFD starts a use of r.fd. It reports false once finish has closed it:
// the file was proved whole and is archived, there is nothing to fill.
func (r *recall) useFD() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.fdClosed {
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

// closeFD closes r.fd after its last use; no use starts after it.
func (r *recall) closeFD() {
	r.mu.Lock()
	r.mu.fdClosed = true
	for r.mu.fdUsers > 0 {
		r.fdIdle.Wait()
	}
	r.mu.Unlock()
	unix.Close(r.fd)
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
	if r.mu.done || r.mu.nfilled != r.nchunks(r.mu.limit) {
		return false
	}
	r.mu.done = true
	return true
}

// ensure returns once every byte of [lo, hi) below the limit is filled, or
// with the error of a fill it needed.
func (r *recall) ensure(ctx context.Context, lo, hi int64) error {
	if !r.useFD() {
		return nil
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
	return op
}

// release gives back a claimed chunk without filling it.
func (r *recall) release(k int64, op *fillOp, err error) {
	r.mu.Lock()
	r.mu.state[k] = chunkEmpty
	delete(r.mu.ops, k)
	r.mu.Unlock()
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
	const page = 4096
	plo, phi := max(lo, s)/page*page, (min(hi, e)+page-1)/page*page
	if plo <= s && phi >= e || plo >= phi {
		return r.fillChunk(ctx, k, op, nil)
	}
	fp := &firstPart{lo: plo, hi: phi, stored: make(chan struct{})}
	r.mu.Lock()
	r.mu.fdUsers++ // useFD: the caller (ensure) holds a use, so it is open
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
// fillChunkFirst).
func (r *recall) fillChunk(ctx context.Context, k int64, op *fillOp, fp *firstPart) error {
	var tier string
	var wrote int64
	var err error
	s := k * r.chunk
	for {
		r.mu.Lock()
		e := min(s+r.chunk, r.mu.limit)
		r.mu.Unlock()
		if e <= s {
			break
		}
		var w int64
		tier, w, err = r.fillRange(ctx, s, e, fp)
		wrote += w
		if !errors.Is(err, errTruncated) {
			break
		}
		var st unix.Stat_t
		if err = unix.Fstat(r.fd, &st); err != nil {
			break
		}
		if st.Size >= e {
			err = fmt.Errorf("fault writing stub bytes %d-%d below its size %d", s, e, st.Size)
			break
		}
		r.sawSize(st.Size)
	}
	if err != nil {
		e := s + r.chunk
		err = &fillError{off: s, n: e - s, err: err}
		r.release(k, op, err)
		return err
	}
	r.mu.Lock()
	r.mu.state[k] = chunkFilled
	delete(r.mu.ops, k)
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

// fillRange writes the verified content into the holes of [s, e). With
// fp, the holes within fp are stored first and fp is signalled, then the
// others. Nothing is stored before the whole of [s, e) is verified, and
// one journal entry covers both stores.
//
// The bytes are stored through a shared mapping of the file, not with
// pwrite: a store past EOF faults instead of extending the file, so a fill
// racing with a truncate the kernel has already allowed can never bring
// truncated bytes back (a truncate to a size that is not page-aligned
// reaches the interceptor as an ordinary 4 KiB access, indistinguishable
// from a write). A fault lowers the limit to the file's size and reports
// errTruncated; the caller retries with the new limit.
func (r *recall) fillRange(ctx context.Context, s, e int64, fp *firstPart) (tier string, wrote int64, err error) {
	holes, err := holeSegments(r.fd, s, e)
	if err != nil {
		return "", 0, fmt.Errorf("find holes: %w", err)
	}
	if len(holes) == 0 {
		return "", 0, nil
	}
	bp := r.in.bufs.Get().(*[]byte)
	defer r.in.bufs.Put(bp)
	buf := (*bp)[:e-s]
	tier, err = r.in.src.ReadVerified(ctx, r.info, buf, s)
	if err != nil {
		return "", 0, fmt.Errorf("source: %w", err)
	}
	r.in.stats.fills.Add(1)
	slot, err := r.in.jr.beginFill(r.key, r.info.FileID, s, e-s)
	if err != nil {
		return "", 0, err
	}
	defer r.in.jr.endFill(slot)
	// Filling moves mtime (the kernel stamps it when a mapped page is
	// first written); a recall must not look like a modification to make,
	// rsync or backup tools, so put back the mtime the file had before.
	// A user write racing with this fill between the two calls would lose
	// its mtime stamp (not its bytes); every release re-reads and hashes
	// the content, so that can never lose data.
	r.storeMu.Lock()
	defer r.storeMu.Unlock()
	var before unix.Stat_t
	if err := unix.Fstat(r.fd, &before); err != nil {
		return "", 0, fmt.Errorf("stat stub: %w", err)
	}
	defer restoreMtime(r.fd, before.Mtim)
	m, err := unix.Mmap(r.fd, s, int(e-s), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return "", 0, fmt.Errorf("map stub at %d: %w", s, err)
	}
	defer unix.Munmap(m)
	store := func(parts [][2]int64) bool {
		for _, h := range parts {
			// Fault the pages in writable with one call (fewer faults than
			// the copy would take, measured); an error (e.g. past EOF)
			// shows up in copyFaulting.
			_ = unix.Madvise(m[(h[0]-s)/4096*4096:h[1]-s], unix.MADV_POPULATE_WRITE)
			if !copyFaulting(m[h[0]-s:h[1]-s], buf[h[0]-s:h[1]-s]) {
				return false
			}
			wrote += h[1] - h[0]
		}
		return true
	}
	rest := holes
	if fp != nil {
		var first [][2]int64
		first, rest = splitSegments(holes, fp.lo, fp.hi)
		if !store(first) {
			return "", wrote, errTruncated
		}
		restoreMtime(r.fd, before.Mtim)
		fp.signal()
	}
	if !store(rest) {
		return "", wrote, errTruncated
	}
	r.in.stats.filledBytes.Add(uint64(wrote))
	return tier, wrote, nil
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

// restoreMtime sets the file's mtime back to mtim, leaving atime alone.
func restoreMtime(fd int, mtim unix.Timespec) {
	ts := []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, mtim}
	_ = unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
}

// copyFaulting copies src into the mapped dst and reports false if a store
// faulted (SIGBUS: the page lies past EOF).
func copyFaulting(dst, src []byte) (ok bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	copy(dst, src)
	return true
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
// block as data and lose its bytes.
func (r *recall) tail(blk int64) (lo, hi int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.limit == 0 || r.mu.limit%blk == 0 {
		return 0, 0
	}
	return (r.mu.limit - 1) / r.chunk * r.chunk, r.mu.limit
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
		if !r.mu.done && !r.mu.fdClosed && !stop.Load() {
			for j := range n {
				c := (r.mu.cursor + j) % n
				if r.mu.state[c] == chunkEmpty {
					k, op = c, r.claimLocked(c)
					r.mu.cursor = c + 1
					break
				}
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

// finish runs once, when every chunk is filled: the stub becomes archived,
// loses its mark, and the completion is reported. It waits for fills still
// in flight (beyond a truncated limit) before closing the fd.
func (r *recall) finish() {
	defer r.in.work.Done()
	first := false
	r.finishing.Do(func() { first = true })
	if !first {
		return
	}
	defer close(r.finished)
	r.mu.Lock()
	var ops []*fillOp
	for _, op := range r.mu.ops {
		ops = append(ops, op)
	}
	r.mu.Unlock()
	for _, op := range ops {
		<-op.done
	}
	// Prove the file whole before it loses its guard: a chunk counted
	// filled may have been punched after the recall began.
	for attempt := 0; ; attempt++ {
		r.mu.Lock()
		limit := r.mu.limit
		r.mu.Unlock()
		holes, err := holeSegments(r.fd, 0, limit)
		if err == nil && len(holes) == 0 {
			break
		}
		if err == nil && attempt < 3 {
			err = r.ensure(context.Background(), 0, limit)
			if err == nil {
				continue
			}
		}
		if err == nil {
			err = fmt.Errorf("holes remain after %d refills", attempt)
		}
		// Keep the mark and the recall: later accesses fill what is missing.
		r.mu.Lock()
		r.mu.done = false
		r.mu.Unlock()
		r.in.fail(Failure{FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path, Background: true,
			Err: fmt.Errorf("recalled file is not whole: %w", err)})
		return
	}
	// The content must be on disk before the state that says so: with
	// delayed allocation a journal commit could otherwise make the state
	// durable while the filled bytes are not, and after a power loss the
	// file would read as holes with no recall to fill them.
	if err := unix.Fdatasync(r.fd); err != nil {
		// As below: keep the mark and the recall.
		r.in.fail(Failure{FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path, Background: true,
			Err: fmt.Errorf("sync recalled content: %w", err)})
		return
	}
	if err := stub.SetState(r.fd, stub.Archived); err != nil {
		// Keep the mark and the recall (every event is allowed at once):
		// a restarted daemon sees state released, finds every chunk full
		// of data and finishes then.
		r.in.fail(Failure{FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path, Background: true,
			Err: fmt.Errorf("set stub state archived: %w", err)})
		return
	}
	r.in.failpoint(FailInFinish, r.pid)
	if err := r.in.g.unmarkFD(r.fd); err != nil && !errors.Is(err, unix.ENOENT) {
		r.in.log.Warn("unmark recalled file", "path", r.path, "err", err)
	}
	r.in.mu.Lock()
	if r.in.mu.recalls[r.key] == r {
		delete(r.in.mu.recalls, r.key)
	}
	r.in.mu.Unlock()
	r.closeFD()
	r.mu.Lock()
	c := Completion{
		FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path,
		Bytes: r.mu.bytes, Size: r.mu.limit, Truncated: r.mu.truncated,
		Duration: time.Since(r.start), Tier: r.mu.tier, PID: r.pid, Process: r.process,
	}
	r.mu.Unlock()
	r.in.stats.completed.Add(1)
	r.in.log.Info("recall completed", "path", c.Path, "file_id", c.FileID, "bytes", c.Bytes,
		"duration", c.Duration, "tier", c.Tier, "process", c.Process)
	r.in.pub.completed(c)
	if r.in.cfg.OnComplete != nil {
		r.in.cfg.OnComplete(c)
	}
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
