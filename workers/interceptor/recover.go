//go:build linux

package interceptor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Recovery of the events a crashed daemon read and did not answer, when
// the group survived in a holder. What the kernel allows (FIELDNOTES,
// checked again by TestCrashRecovery):
//
//   - An event read by the dead daemon is not delivered again. Its fd was
//     opened in the dead process's fd table and closed when it died; the
//     kernel keeps the event on the group's access list under that fd
//     number, and a reply with that number from any holder of the group
//     releases it. A reply matches the oldest pending event with the
//     number.
//   - So a new event must never be answered with a number an orphan still
//     holds: it would release the orphan (unfilled: zeros) and leave the
//     new event pending. Two guards: before the first read, every orphan
//     number free in this process is reserved (a dup of /dev/null sits on
//     it, so the kernel cannot give it to a new event fd); and a new event
//     whose fd number is still an orphan's (a number that was busy at
//     reservation and freed since) is not handled until the orphan is
//     answered.
//   - We get no fd for the orphan's file from the kernel. Recovery opens
//     it by handle (journaled) and maps the orphan's range: the mmap
//     raises one FAN_PRE_ACCESS event for the whole range, which this
//     daemon handles like any other (fill, verify, ALLOW). Then the orphan
//     is allowed. If any of that fails or takes longer than
//     RecoverTimeout, the orphan is denied with EIO.
//   - An answer the dead daemon had decided (journaled as answering) is
//     written again before the first read: refused (ENOENT) if it went
//     through, else it releases the one event that can hold its number.
//   - Events the journal missed (a crash between read and the journal
//     store) are denied with EIO by a sweep of every fd number of the
//     journal's table, before the first read: at that point every event
//     on the access list is an orphan.
//   - A truncate (count 0) is allowed at once, before the first read: no
//     recall exists yet in this process whose fills could extend the file.

type orphanState struct {
	o         orphan
	done      chan struct{}
	reserved  int  // the fd number held on /dev/null, or -1
	answering bool // finishOrphan has begun: it answers once (a second reply with its number could release a new event)
}

// recoverStart runs before the reader starts: sweep, reservation and
// truncates. It returns the orphans that still need a fill.
func (i *Interceptor) recoverStart(orphans []orphan) []orphan {
	known := map[int]bool{}
	for _, o := range orphans {
		known[o.fd] = true
	}
	// Answers the dead daemon began to write: write them again. If the
	// first went through, the kernel refuses this one (ENOENT); no event of
	// ours can hold the number yet.
	resent, written := 0, 0
	for fd, errno := range i.jr.pendingAnswers() {
		known[fd] = true
		switch err := i.g.respondOrphan(fd, errno); {
		case err == nil:
			resent++
		case errors.Is(err, unix.ENOENT):
			written++
		default:
			i.log.Error("write an answer a crashed daemon had decided", "fd", fd, "err", err)
		}
		i.jr.clearEvent(fd)
	}
	if resent+written > 0 {
		i.log.Warn("answers a crashed daemon had decided: written again", "resent", resent, "already_written", written)
	}
	swept := 0
	for fd := range journalEventSlots {
		if !known[fd] && i.g.respondOrphan(fd, unix.EIO) == nil {
			swept++
		}
	}
	if swept > 0 {
		i.log.Warn("denied orphaned fanotify events the journal did not record", "count", swept)
	}
	i.orph.Lock()
	i.orph.m = map[int]*orphanState{}
	var rest []orphan
	for _, o := range orphans {
		st := &orphanState{o: o, done: make(chan struct{}), reserved: reserveFD(o.fd)}
		if st.reserved < 0 {
			i.log.Warn("orphaned fd number is busy in this process; new events that get it wait for the orphan", "fd", o.fd)
		}
		i.orph.m[o.fd] = st
		if o.hasRange && o.count == 0 && o.mask&unix.FAN_OPEN_PERM == 0 {
			defer i.finishOrphan(o, 0) // after the lock is released
			continue
		}
		rest = append(rest, o)
	}
	i.orph.Unlock()
	i.log.Info("recovering orphaned fanotify events", "count", len(orphans), "to_fill", len(rest))
	return rest
}

// recoverOrphans fills and answers each orphan, concurrently; it returns
// when all are answered.
func (i *Interceptor) recoverOrphans(orphans []orphan) {
	var wg sync.WaitGroup
	for _, o := range orphans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := make(chan unix.Errno, 1)
			go func() { res <- i.recoverOne(o) }()
			timer := time.NewTimer(i.cfg.RecoverTimeout)
			defer timer.Stop()
			select {
			case errno := <-res:
				i.finishOrphan(o, errno)
			case <-timer.C:
				i.log.Error("recovery of an orphaned event timed out; denying", "fd", o.fd, "ino", o.ino)
				i.finishOrphan(o, unix.EIO)
			}
		}()
	}
	wg.Wait()
}

// finishOrphan answers the orphan, clears its journal slot and frees its
// number.
func (i *Interceptor) finishOrphan(o orphan, errno unix.Errno) {
	i.orph.Lock()
	st := i.orph.m[o.fd]
	if st == nil || st.answering || st.o.seq != o.seq {
		i.orph.Unlock()
		return // answered already (serveOverOrphan)
	}
	st.answering = true
	i.orph.Unlock()
	if st.reserved >= 0 {
		// Only while the number is reserved can no event of ours hold it,
		// so only then may a crash leave an answer for the next daemon to
		// write again; otherwise the slot stays an orphan.
		i.jr.answering(o.fd, o.seq, errno)
	}
	err := i.g.respondOrphan(o.fd, errno)
	switch {
	case errors.Is(err, unix.ENOENT):
		i.log.Info("orphaned event was already answered", "fd", o.fd)
	case err != nil:
		i.log.Error("answer orphaned event", "fd", o.fd, "err", err)
	default:
		i.stats.orphans.Add(1)
		if errno == 0 {
			i.stats.allowed.Add(1)
		} else {
			i.stats.denied.Add(1)
		}
		i.log.Info("answered orphaned event", "fd", o.fd, "ino", o.ino, "off", o.off, "count", o.count, "errno", int(errno))
	}
	i.jr.end(o.fd, o.seq)
	i.orph.Lock()
	delete(i.orph.m, o.fd)
	i.orph.Unlock()
	if st.reserved >= 0 {
		unix.Close(st.reserved)
	}
	close(st.done)
}

// reserveFD makes fd number n name /dev/null in this process, if it is
// free, so that no new event fd gets it; it returns n, or -1 if n is
// busy. It never replaces an open fd (F_DUPFD takes the lowest free
// number >= n).
func reserveFD(n int) int {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	if fd == n {
		return n
	}
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, n)
	unix.Close(fd)
	if err != nil {
		return -1
	}
	if d != n {
		unix.Close(d)
		return -1
	}
	return n
}

// serveOverOrphan handles ev, an access of this process (the recovery's
// own open or mmap of an orphan's file) whose fd number is still an
// orphan's because that number was busy at reservation and freed since.
// Waiting for the orphan would deadlock: its recovery waits for ev. The
// kernel matches a reply to the oldest pending event with a number, so
// the orphan is answered first — after its range is filled through ev's
// fd (an event fd raises no event) — then ev. It returns false, and
// does nothing, when ev is not on the orphan's file: the caller waits.
func (i *Interceptor) serveOverOrphan(ev event) bool {
	i.orph.Lock()
	st := i.orph.m[ev.fd]
	i.orph.Unlock()
	if st == nil {
		return false
	}
	o := st.o
	var fst unix.Stat_t
	if unix.Fstat(ev.fd, &fst) != nil || fst.Dev != o.dev || fst.Ino != o.ino {
		return false
	}
	fill := ev
	fill.mask, fill.hasRange = unix.FAN_PRE_ACCESS, true
	fill.off, fill.count = o.off&^4095, min(o.off+o.count, fst.Size)-o.off&^4095
	if o.mask&unix.FAN_OPEN_PERM != 0 || !o.hasRange {
		fill.off, fill.count = 0, fst.Size
		if o.mask&unix.FAN_OPEN_PERM != 0 && i.mode == ModePreAccess && fst.Size >= i.cfg.WholeFileBelow {
			fill.count = 0 // as recoverOne: large stubs are recalled range by range
		}
	}
	errno := unix.Errno(0)
	if fill.count > 0 {
		errno = i.decide(fill)
	}
	i.log.Warn("an event of this process got an orphan's fd number; answered the orphan first", "fd", ev.fd, "ino", o.ino, "errno", int(errno))
	i.finishOrphan(o, errno)
	i.answer(ev, i.decide(ev), 0)
	return true
}

// orphanWait returns a channel to wait on before handling a new event
// with fd number fd, or nil.
func (i *Interceptor) orphanWait(fd int) <-chan struct{} {
	i.orph.Lock()
	defer i.orph.Unlock()
	if st := i.orph.m[fd]; st != nil {
		return st.done
	}
	return nil
}

// recoverOne makes the orphan's range resident (through an event this
// daemon handles) and returns 0 to allow it or the errno to deny it with.
func (i *Interceptor) recoverOne(o orphan) unix.Errno {
	fd, err := openOrphanFile(o)
	if err != nil {
		i.fail(Failure{Offset: o.off, Length: o.count, Err: fmt.Errorf("recover orphaned event: %w", err)})
		return unix.EIO
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return unix.EIO
	}
	if st.Dev != o.dev || st.Ino != o.ino {
		i.fail(Failure{Path: fdPath(fd), Err: fmt.Errorf("recover orphaned event: handle opened inode %d, want %d", st.Ino, o.ino)})
		return unix.EIO
	}
	lo, hi := o.off&^4095, o.off+o.count
	switch {
	case o.mask&unix.FAN_OPEN_PERM != 0:
		if i.mode == ModePreAccess && st.Size >= i.cfg.WholeFileBelow {
			return 0 // as decide: large stubs are recalled range by range
		}
		lo, hi = 0, st.Size
	case !o.hasRange:
		lo, hi = 0, st.Size
	}
	hi = min(hi, st.Size)
	if hi <= lo {
		return 0
	}
	// One event for the whole range; decide fills it (and the EOF chunk,
	// for appends) before it is allowed. Page faults raise nothing and
	// none happen: the mapping is never touched.
	m, err := unix.Mmap(fd, lo, int(hi-lo), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		i.fail(Failure{Path: fdPath(fd), Offset: lo, Length: hi - lo, Err: fmt.Errorf("recover orphaned event: %w", err)})
		if e, ok := err.(unix.Errno); ok && (e == unix.ENOSPC || e == unix.EDQUOT) {
			return e
		}
		return unix.EIO
	}
	unix.Munmap(m)
	return 0
}

// openOrphanFile opens the orphan's file by its handle, on the mount with
// its mount id (or any mount of its device).
func openOrphanFile(o orphan) (int, error) {
	mounts, err := mountPoints()
	if err != nil {
		return -1, err
	}
	h := unix.NewFileHandle(o.handleType, o.handleBytes)
	try := func(mp string) (int, error) {
		mfd, err := unix.Open(mp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		defer unix.Close(mfd)
		var st unix.Stat_t
		if err := unix.Fstat(mfd, &st); err != nil || st.Dev != o.dev {
			return -1, fmt.Errorf("mount %s is not device %d", mp, o.dev)
		}
		return unix.OpenByHandleAt(mfd, h, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_LARGEFILE)
	}
	if mp, ok := mounts[o.mountID]; ok {
		if fd, err := try(mp); err == nil {
			return fd, nil
		}
	}
	for _, mp := range mounts {
		if fd, err := try(mp); err == nil {
			return fd, nil
		}
	}
	return -1, fmt.Errorf("open by handle: no mount of device %d opens inode %d", o.dev, o.ino)
}

// mountPoints maps mount ids to mount points, from /proc/self/mountinfo.
func mountPoints() (map[int32]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[int32]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		id, err := strconv.Atoi(fields[0])
		if err != nil {
			continue
		}
		out[int32(id)] = unescapeMountinfo(fields[4])
	}
	return out, sc.Err()
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
