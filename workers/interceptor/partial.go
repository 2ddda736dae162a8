//go:build linux

package interceptor

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stub"
)

// Partially resident stubs (issue 12 item 4, as DMF's partial-state
// files).
//
// An access fills what it touches (whole chunks) before it is allowed,
// and then the chunks of the next Config.ReadAhead bytes in the
// background. The rest of the file is filled in the background only when
// the stub is smaller than Config.FillWholeBelow or its accesses look
// sequential (Config.SequentialAfter bytes read in sequence): `tail -c 100`
// of a 1 GiB stub leaves one or two chunks resident, `cat` still ends with
// the whole file. A stub that is never filled whole stays a stub: its
// state stays released, its mark and its probe-guard registration stay,
// and what it holds is only bytes that were verified (the fill-safety
// rules of recall.go do not change: a chunk counts as filled only when
// stored whole, a failed fill leaves holes).
//
// What a partial stub holds is on disk: its data extents. A recall keeps
// no state that the disk does not (except which chunks it filled itself,
// used by the proof): an idle recall is dropped (Config.IdleAfter, and at
// Hold and Release), and the next access starts a new one, which
// counts every chunk that is all data as filled, as after a restart.
//
// Accesses that touch only resident bytes — a resident head or tail kept
// by the release (stub.Layout), chunks filled earlier — are allowed at
// once, with no recall and no recall.requested, as long as the block at
// EOF is resident too (an append writes into it, see recall.tail) and no
// crashed fill left bytes of this stub half written (the journal).

// errDropped: the recall was dropped while the caller held it; the event
// is decided again, with a new recall.
var errDropped = errors.New("interceptor: recall dropped while idle")

// maxStreams is how many sequential streams of one stub are followed.
const maxStreams = 4

// stream is a run of accesses, each starting where the run ended.
type stream struct {
	end, run int64
	used     time.Time
}

// partialState is the part of a recall's state that decides what the
// background fills. Protected by recall.mu.
type partialState struct {
	// whole: the rest of the file is filled in the background (the stub
	// is small, or was read sequentially); else only up to upto.
	whole bool
	// upto: the chunk index the background fills up to (exclusive) when
	// not whole: the end of the read-ahead of the last access.
	upto    int64
	streams [maxStreams]stream
	// last: the end of the last access or fill; an idle recall is dropped
	// IdleAfter after it.
	last      time.Time
	reapArmed bool
	// dropped: this recall was taken out of Interceptor.mu.recalls while
	// idle. No use of its fd starts after it (useFD); a caller that held
	// it decides its event again.
	dropped bool
}

// note records an access of [lo, hi) (clipped to size) and reports
// whether the accesses now look sequential: one stream has advanced by
// seqAfter bytes or more. An access that ends where none advances (a read
// at EOF, a repeat) leaves the streams as they are.
func (p *partialState) note(lo, hi, size, seqAfter int64, now time.Time) bool {
	hi = min(hi, size)
	if hi <= lo {
		return false
	}
	victim := 0 // an unused stream, else the least recently used
	for j := range p.streams {
		s := &p.streams[j]
		if !s.used.IsZero() && lo <= s.end && hi > s.end && s.end-s.run <= lo {
			s.run += hi - s.end
			s.end, s.used = hi, now
			return seqAfter > 0 && s.run >= seqAfter
		}
		if s.used.Before(p.streams[victim].used) {
			victim = j
		}
	}
	p.streams[victim] = stream{end: hi, run: hi - lo, used: now}
	return seqAfter > 0 && hi-lo >= seqAfter
}

// accessed runs after an access of [lo, hi) was filled and before it is
// allowed: it starts the background fills the access calls for — the
// rest of the file (small stub, or sequential access) or its read-ahead.
func (r *recall) accessed(lo, hi int64) {
	cfg := &r.in.cfg
	now := time.Now()
	r.mu.Lock()
	if r.mu.done || r.mu.part.dropped {
		r.mu.Unlock()
		return
	}
	seq := r.mu.part.note(lo, hi, r.info.Size, cfg.SequentialAfter, now)
	if !r.mu.part.whole && (seq || cfg.FillWholeBelow > 0 && r.info.Size < cfg.FillWholeBelow) {
		r.mu.part.whole = true
		r.in.log.Debug("filling the whole stub in the background", "path", r.path, "sequential", seq)
	}
	whole := r.mu.part.whole
	var ahead bool
	if !whole && cfg.ReadAhead > 0 {
		if end := r.nchunks(min(hi+cfg.ReadAhead, r.mu.limit)); end > hi/r.chunk {
			r.mu.part.upto, ahead = end, true
		}
	}
	r.mu.part.last = now
	r.armReapLocked()
	r.mu.Unlock()
	if whole || ahead {
		r.kick(hi)
	}
}

// idleLater records an access that starts no background fill (a
// throttled recall): the recall is dropped IdleAfter after the last one.
func (r *recall) idleLater() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.part.last = time.Now()
	r.armReapLocked()
}

// nextBackgroundLocked returns the next chunk the background fills: the
// first empty one from the cursor on (wrapping around when the whole file
// is filled, up to the read-ahead's end otherwise), or -1.
func (r *recall) nextBackgroundLocked(n int64) int64 {
	end := n
	if !r.mu.part.whole {
		end = min(r.mu.part.upto, n)
	}
	for c := r.mu.cursor; c < end; c++ {
		if r.mu.state[c] == chunkEmpty {
			return c
		}
	}
	if r.mu.part.whole {
		for c := int64(0); c < min(r.mu.cursor, n); c++ {
			if r.mu.state[c] == chunkEmpty {
				return c
			}
		}
	}
	return -1
}

// residentLocked reports whether the bytes of [lo, hi) that lie in chunk
// k, which is empty (not counted filled, no fill in flight), are all data
// already, so that an access to them needs no fill of the chunk. Such
// data is the object's: a resident head or tail the release kept, or
// pages of a first part stored and verified (fillChunkFirst) whose chunk
// was not finished; a failed fill punches what it stored before the
// chunk is empty again, and what it could not punch is in unclean (then
// the chunk is filled, which punches it first).
func (r *recall) residentLocked(k, lo, hi int64) bool {
	if len(r.mu.unclean[k]) > 0 {
		return false
	}
	a, b := max(lo, k*r.chunk), min(hi, (k+1)*r.chunk, r.mu.limit)
	return a < b && allData(r.fd, a, b)
}

// allData reports whether every byte of [a, b) is backed by data.
func allData(fd int, a, b int64) bool {
	h, err := unix.Seek(fd, a, unix.SEEK_HOLE)
	return err == nil && h >= b
}

// droppedErr is errDropped if the recall was dropped, else nil.
func (r *recall) droppedErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.part.dropped {
		return errDropped
	}
	return nil
}

// idleLocked reports whether nothing of the recall is in flight or
// pending: no fill, no background filler, no finish, no use of its fd,
// no segment left to punch. Its state is then all on disk.
func (r *recall) idleLocked() bool {
	return len(r.mu.ops) == 0 && !r.mu.bgRunning && !r.mu.finishing && !r.mu.done &&
		r.mu.fdUsers == 0 && !r.mu.fdClosed && len(r.mu.unclean) == 0
}

// dropIfIdle marks the recall dropped if it is idle, and reports whether
// it did; the caller takes it out of Interceptor.mu.recalls (holding
// Interceptor.mu) and closes its fd.
func (r *recall) dropIfIdle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.part.dropped {
		return true
	}
	if !r.idleLocked() {
		return false
	}
	r.mu.part.dropped = true
	return true
}

// dropIdle drops the recall of key if it is idle, and closes its fds
// (Hold and Release: a partially resident stub may be released again).
func (i *Interceptor) dropIdle(key inodeKey) {
	i.mu.Lock()
	r := i.mu.recalls[key]
	if r == nil || !r.dropIfIdle() {
		i.mu.Unlock()
		return
	}
	delete(i.mu.recalls, key)
	i.mu.Unlock()
	// Now, not later: the releaser's write lease is refused while this
	// process holds another open fd of the file. Idle, and dropped: no
	// use is in flight or can start, so this does not wait.
	r.closeFD()
}

// armReapLocked makes sure a timer will drop the recall once it is idle.
func (r *recall) armReapLocked() {
	if r.mu.part.reapArmed || r.in.cfg.IdleAfter <= 0 {
		return
	}
	r.mu.part.reapArmed = true
	time.AfterFunc(r.in.cfg.IdleAfter, func() { r.in.reap(r) })
}

// reap drops r if it has been idle for IdleAfter, or looks again later.
func (i *Interceptor) reap(r *recall) {
	i.mu.Lock()
	if i.mu.closed || i.mu.recalls[r.key] != r {
		i.mu.Unlock()
		return
	}
	r.mu.Lock()
	r.mu.part.reapArmed = false
	quiet := time.Since(r.mu.part.last) >= i.cfg.IdleAfter
	if r.mu.done || r.mu.part.dropped {
		r.mu.Unlock()
		i.mu.Unlock()
		return
	}
	if !quiet || !r.idleLocked() {
		r.armReapLocked()
		r.mu.Unlock()
		i.mu.Unlock()
		return
	}
	r.mu.part.dropped = true
	r.mu.Unlock()
	delete(i.mu.recalls, r.key)
	i.work.Add(1)
	i.mu.Unlock()
	i.log.Debug("dropped the idle recall of a partially resident stub", "path", r.path)
	go func() {
		defer i.work.Done()
		r.closeFD()
	}()
}

// servedResident reports whether the access [lo, hi) of ev to the stub
// key, of which no recall ran at its lookup, can be allowed at once: the
// stub has its archived size, every byte of the access below it is
// resident, and so is the block at EOF (an append writes there). What is
// resident is Interceptor.resident's to say (rules.go: data on disk with
// no fill in flight and no half-written segment in the journal): the
// object's bytes, kept by the release (stub.Layout) or stored whole by
// verified fills.
func (i *Interceptor) servedResident(ev event, key inodeKey, st *unix.Stat_t, info stub.Info) bool {
	size := info.Size
	lo, hi := ev.off, min(ev.off+ev.count, size)
	if ev.count == 0 || st.Size != size || st.Nlink == 0 {
		// A truncate or clone (count 0), and a stub whose size changed (an
		// O_TRUNC open raises no event), take the usual path: its recall
		// ends as a modification. So does a deleted stub (a recall dropped
		// as stale may still be filling it).
		return false
	}
	if blk := max(int64(st.Blksize), 4096); size%blk != 0 {
		if ok, _ := i.resident(ev.fd, key, size/blk*blk, size); !ok {
			return false
		}
	}
	if lo >= hi {
		return true
	}
	ok, _ := i.resident(ev.fd, key, lo, hi)
	return ok
}

// openNeedsNoRecall reports whether an open (FAN_OPEN_PERM) of a stub in
// mode pre-access is allowed with no recall at all: the stub is not
// recalled whole at open (not under WholeFileBelow, not opened by one of
// WholeFilePrograms or MtimeCheckPrograms), so its bytes are recalled
// range by range as they are read, and an open alone starts nothing —
// no recall.requested for a program that opens a stub and reads only its
// resident head. (An MtimeCheckPrograms program takes the usual path:
// whether it needs the whole file depends on the recall's store fd.)
func (i *Interceptor) openNeedsNoRecall(ev event, info stub.Info) bool {
	return i.mode == ModePreAccess && ev.mask&unix.FAN_OPEN_PERM != 0 && info.Size >= i.cfg.WholeFileBelow &&
		!i.isProgram(ev.pid, i.cfg.WholeFilePrograms) && !i.isProgram(ev.pid, i.cfg.MtimeCheckPrograms)
}

// recallCount is the number of recalls held (Stats.Recalls).
func (i *Interceptor) recallCount() uint64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return uint64(len(i.mu.recalls))
}
