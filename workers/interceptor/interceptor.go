//go:build linux

package interceptor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stub"
)

// Source produces the verified bytes of archived content. The interceptor
// is its only caller.
type Source interface {
	// ReadVerified fills all of p with the bytes [off, off+len(p)) of the
	// archived content described by st (st.ObjectID, st.Size), each one
	// verified against the object's hashes, and names the tier that served
	// them. If it cannot, it returns an error and p is ignored: a partial or
	// unverified read must be an error. 0 <= off and off+len(p) <= st.Size
	// always hold. It is called concurrently, for the same and for different
	// objects; ctx is cancelled when the interceptor stops.
	ReadVerified(ctx context.Context, st stub.Info, p []byte, off int64) (tier string, err error)
}

// Completion describes a stub whose whole content is back.
type Completion struct {
	FileID, ObjectID string
	ReleaseID        string        // stub.Info.ReleaseID of the stub
	Path             string        // path of the file when its recall began
	Bytes            int64         // bytes written by this recall's fills (not by earlier recalls of a partially resident stub, dropped while idle)
	Size             int64         // bytes of archived content now resident
	Truncated        bool          // the file was truncated below its archived size: its content is no longer the object
	Modified         bool          // a program wrote the file during (or before) its recall: its content is no longer the object
	Duration         time.Duration // from the first event to completion
	Proof            time.Duration // of Duration: reading the file back and hashing it, before it was archived
	Tier             string        // tier of the last fill ("" if nothing had to be filled)
	PID              int32         // pid of the first program that touched the stub
	Process          string        // its /proc/<pid>/comm, read at that event
	Exe              string        // its executable (/proc/<pid>/exe), read at that event
}

// Failure describes an access that was denied, or a background fill that
// failed.
type Failure struct {
	FileID, ObjectID string
	ReleaseID        string // stub.Info.ReleaseID, when the stub is known
	Path             string
	Offset, Length   int64 // bytes that could not be filled
	PID              int32 // 0 for a background fill
	Process          string
	Background       bool
	Err              error
}

// Stats are counters since Open.
type Stats struct {
	Events      uint64 // events read, including overflows
	Allowed     uint64
	Denied      uint64
	Overflows   uint64
	Fills       uint64 // calls to Source.ReadVerified that succeeded
	FilledBytes uint64 // bytes written into stubs
	Completed   uint64
	Orphans     uint64 // events of a crashed predecessor answered at Open
	Filling     uint64 // chunk fills in flight now (claimed, not yet filled or given back)
	Recalls     uint64 // recalls held now (in progress, or of partially resident stubs not yet idle)
}

type inodeKey struct{ dev, ino uint64 }

// Interceptor owns one fanotify group and recalls the stubs it marks.
//
// Lock order: Interceptor.mu, then recall.mu. Neither is held across a
// system call that can block on a program or on the Source.
type Interceptor struct {
	cfg  Config
	mode Mode
	src  Source
	log  *slog.Logger
	g    *group
	pid  int32
	jr   *journal    // nil without Config.JournalDir
	hc   *holderConn // nil without Config.HolderSocket
	pub  *publisher  // nil without Config.Emitter
	// rules: Config.Rules and the storm detector (rules.go); nil when
	// there is neither.
	rules *rules

	// orph holds the orphaned events of a crashed predecessor until each is
	// answered (see recover.go).
	orph struct {
		sync.Mutex
		m map[int]*orphanState // by fd number
	}

	// self holds, by stub, byte ranges this process is storing into or
	// punching through a fd that raises events (openNoCmtime): an event of
	// this process within one is that store's own, allowed at once (it
	// can wait for nothing: the chunk is claimed by the fill that raised
	// it).
	self struct {
		sync.Mutex
		m map[inodeKey][][2]int64
	}

	bgSem      chan struct{}
	bgCtx      context.Context // cancelled at the start of Close
	bgCancel   context.CancelFunc
	fgCtx      context.Context // cancelled StopTimeout after Close starts
	fgCancel   context.CancelFunc
	work       sync.WaitGroup // event handlers, background fillers, finishers
	readerDone chan struct{}
	bufs       sync.Pool

	mu struct {
		sync.Mutex
		recalls   map[inodeKey]*recall
		releasing map[inodeKey]chan struct{} // closed when the punch of Release is done
		held      map[string]inodeKey        // paths between Hold and Unhold
		closed    bool
	}

	stats struct {
		events, allowed, denied, overflows, fills, filledBytes, completed, orphans atomic.Uint64
		filling                                                                    atomic.Int64
	}
}

// Open creates the fanotify group and starts reading its events. It needs
// CAP_SYS_ADMIN. logger must not be nil.
func Open(cfg Config, src Source, logger *slog.Logger) (*Interceptor, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if src == nil {
		return nil, errors.New("interceptor: nil source")
	}
	if logger == nil {
		return nil, errors.New("interceptor: nil logger")
	}
	mode := cfg.Mode
	if mode == ModeAuto {
		if ok, _ := KernelHasPreAccess(); ok {
			mode = ModePreAccess
		} else {
			mode = ModeOpenPerm
		}
	}
	var mask uint64 = unix.FAN_PRE_ACCESS
	if cfg.WholeFileBelow > 0 || len(cfg.WholeFilePrograms) > 0 || len(cfg.MtimeCheckPrograms) > 0 {
		mask |= unix.FAN_OPEN_PERM
	}
	if len(cfg.Rules) > 0 {
		mask |= unix.FAN_OPEN_PERM // a rule may deny the open itself
	}
	if mode == ModeOpenPerm {
		mask = unix.FAN_OPEN_PERM
	}
	var jr *journal
	if cfg.JournalDir != "" {
		var err error
		if jr, err = openJournal(cfg.JournalDir); err != nil {
			return nil, fmt.Errorf("interceptor: %w", err)
		}
	}
	g, hc, recovered, err := obtainGroup(cfg, mask, logger)
	if err != nil {
		jr.close()
		return nil, fmt.Errorf("interceptor: %w", err)
	}
	var orphans []orphan
	if jr != nil {
		if recovered {
			orphans = jr.orphans()
		} else {
			jr.forgetEvents() // their group is gone, and with it their events
		}
	}
	i := &Interceptor{
		cfg: cfg, mode: mode, src: src, log: logger, g: g, pid: int32(os.Getpid()), jr: jr, hc: hc,
		pub:        newPublisher(cfg.Emitter, logger),
		bgSem:      make(chan struct{}, cfg.BackgroundFills),
		readerDone: make(chan struct{}),
	}
	i.rules = newRules(&i.cfg)
	i.src = i.rules.source(src)
	i.bufs.New = func() any { b := make([]byte, cfg.ChunkSize); return &b }
	i.mu.recalls = map[inodeKey]*recall{}
	i.mu.releasing = map[inodeKey]chan struct{}{}
	i.mu.held = map[string]inodeKey{}
	i.self.m = map[inodeKey][][2]int64{}
	i.bgCtx, i.bgCancel = context.WithCancel(context.Background())
	i.fgCtx, i.fgCancel = context.WithCancel(context.Background())
	if recovered {
		orphans = i.recoverStart(orphans)
	}
	go i.readLoop()
	if recovered {
		i.recoverOrphans(orphans)
	}
	logger.Info("interceptor open", "mode", string(mode), "chunk_size", cfg.ChunkSize,
		"holder", cfg.HolderSocket != "", "group_from_holder", recovered)
	return i, nil
}

// obtainGroup returns the group of the holder if it has one (recovered),
// else a new group, handed to the holder when there is one.
func obtainGroup(cfg Config, mask uint64, logger *slog.Logger) (g *group, hc *holderConn, recovered bool, err error) {
	if cfg.HolderSocket != "" {
		if hc, err = connectHolder(cfg.HolderSocket, cfg.HolderCommand, logger); err != nil {
			return nil, nil, false, err
		}
		fd, err := hc.get()
		if err != nil {
			hc.close()
			return nil, nil, false, err
		}
		if err := hc.grace(cfg.HolderGrace); err != nil {
			// A holder of an older version: it keeps the group across a
			// crash but cannot be parked (Close falls back to a drop).
			logger.Warn("the holder does not take a grace; stop it (strata holder stop) while no daemon runs to get one that does", "err", err)
		}
		if fd >= 0 {
			if g, err = groupFromFD(fd, mask); err != nil {
				unix.Close(fd)
				hc.close()
				return nil, nil, false, err
			}
			logger.Info("took the fanotify group over from the holder: marks and held programs survived")
			return g, hc, true, nil
		}
	}
	if g, err = openGroup(mask); err != nil {
		hc.close()
		return nil, nil, false, err
	}
	if hc != nil {
		if err := hc.put(g.fd); err != nil {
			g.close()
			hc.close()
			return nil, nil, false, err
		}
	}
	return g, hc, false, nil
}

// Mode returns the mode in use (never ModeAuto).
func (i *Interceptor) Mode() Mode { return i.mode }

// Stats returns the counters.
func (i *Interceptor) Stats() Stats {
	return Stats{
		Events: i.stats.events.Load(), Allowed: i.stats.allowed.Load(), Denied: i.stats.denied.Load(),
		Overflows: i.stats.overflows.Load(), Fills: i.stats.fills.Load(),
		FilledBytes: i.stats.filledBytes.Load(), Completed: i.stats.completed.Load(),
		Orphans: i.stats.orphans.Load(), Filling: uint64(max(i.stats.filling.Load(), 0)),
		Recalls: i.recallCount(),
	}
}

// Mark puts an inode mark on the stub at path (a regular file; symlinks
// are not followed). Marking an already marked file is a no-op. Mark
// opens nothing, so it raises no event.
func (i *Interceptor) Mark(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("mark %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("mark %s: not a regular file", path)
	}
	key := inodeKey{st.Dev, st.Ino}
	if err := i.mark(path, key); err != nil {
		return err
	}
	if err := i.guardPath(path, key); err != nil {
		i.log.Error("register a stub with the probe guard: programs that probe its holes are not stopped", "path", path, "err", err)
	}
	return nil
}

func (i *Interceptor) mark(path string, key inodeKey) error {
	i.dropStale(key)
	if err := i.g.mark(path); err != nil {
		return fmt.Errorf("mark %s: %w", path, explainMarkErr(err))
	}
	return nil
}

// GuardStub registers the file open at fd with Config.Guard (a no-op
// without one). The releaser calls it between Hold and the punch, with
// the fd it punches through.
func (i *Interceptor) GuardStub(fd int) error {
	if i.cfg.Guard == nil {
		return nil
	}
	return i.cfg.Guard.AddStub(fd)
}

// unguard unregisters the file open at fd (a stub made whole).
func (i *Interceptor) unguard(fd int, path string) {
	if i.cfg.Guard == nil {
		return
	}
	if err := i.cfg.Guard.RemoveStub(fd); err != nil {
		i.log.Warn("unregister a recalled file from the probe guard", "path", path, "err", err)
	}
}

// guardPath registers the stub at path with Config.Guard. It opens the
// file, which raises an open event once the file is marked: a releasing
// entry lets this process's event through at once (other programs' wait
// the few microseconds it takes).
func (i *Interceptor) guardPath(path string, key inodeKey) error {
	if i.cfg.Guard == nil {
		return nil
	}
	i.mu.Lock()
	done := make(chan struct{})
	if _, busy := i.mu.releasing[key]; busy {
		done = nil // a release or another registration holds it already
	} else {
		i.mu.releasing[key] = done
	}
	i.mu.Unlock()
	if done != nil {
		defer func() {
			i.mu.Lock()
			delete(i.mu.releasing, key)
			i.mu.Unlock()
			close(done)
		}()
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_LARGEFILE, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if (inodeKey{st.Dev, st.Ino}) != key {
		return fmt.Errorf("%s was replaced while being marked", path)
	}
	return i.cfg.Guard.AddStub(fd)
}

// Hold marks the file at path for a release that punches its hole itself
// (workers/releaser): from now until Unhold(path), accesses by other
// programs wait, so none can read data that is about to be punched and
// take it for filled. The caller must call Unhold after the punch (or on
// failure), whatever happens.
func (i *Interceptor) Hold(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("mark %s: %w", path, err)
	}
	key := inodeKey{st.Dev, st.Ino}
	i.dropIdle(key) // a partially resident stub's: its state is on disk
	i.dropStale(key)
	i.mu.Lock()
	if r := i.mu.recalls[key]; r != nil {
		i.mu.Unlock()
		return fmt.Errorf("mark %s: a recall of this file is in progress", path)
	}
	if _, ok := i.mu.releasing[key]; ok {
		i.mu.Unlock()
		return fmt.Errorf("mark %s: already being released", path)
	}
	i.mu.releasing[key] = make(chan struct{})
	i.mu.held[path] = key
	i.mu.Unlock()
	// No guard registration here: an open would break the releaser's write
	// lease. The releaser calls GuardStub with its own fd before the punch.
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		i.Unhold(path)
		return fmt.Errorf("mark %s: not a regular file", path)
	}
	if err := i.mark(path, key); err != nil {
		i.Unhold(path)
		return err
	}
	return nil
}

// Unhold ends a Hold: waiting accesses proceed (and recall).
func (i *Interceptor) Unhold(path string) {
	i.mu.Lock()
	key, ok := i.mu.held[path]
	var done chan struct{}
	if ok {
		done = i.mu.releasing[key]
		delete(i.mu.releasing, key)
		delete(i.mu.held, path)
	}
	i.mu.Unlock()
	if done != nil {
		close(done)
	}
}

// Unmark removes the mark of path. A file without a mark is not an error.
func (i *Interceptor) Unmark(path string) error {
	if err := i.g.unmark(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmark %s: %w", path, err)
	}
	return nil
}

// Release makes the file at path a guarded stub: its xattrs must already
// say released (stub.Write, fsynced); Release marks it and then frees its
// blocks with fallocate(PUNCH_HOLE|KEEP_SIZE). The mark comes first, so no
// program can ever read the holes; the punch itself raises an event (from
// this process) that is allowed without a recall, and events of other
// programs on the file wait until the punch is done, then recall.
func (i *Interceptor) Release(path string) (retErr error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("release %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("release %s: not a regular file", path)
	}
	key := inodeKey{st.Dev, st.Ino}
	i.dropIdle(key)
	i.dropStale(key)
	i.mu.Lock()
	if r := i.mu.recalls[key]; r != nil {
		i.mu.Unlock()
		return fmt.Errorf("release %s: a recall of this file is in progress", path)
	}
	if _, ok := i.mu.releasing[key]; ok {
		i.mu.Unlock()
		return fmt.Errorf("release %s: already being released", path)
	}
	done := make(chan struct{})
	i.mu.releasing[key] = done
	i.mu.Unlock()
	defer func() {
		i.mu.Lock()
		delete(i.mu.releasing, key)
		i.mu.Unlock()
		close(done)
	}()

	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_LARGEFILE, 0)
	if err != nil {
		return fmt.Errorf("release %s: %w", path, err)
	}
	defer unix.Close(fd)
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil {
		return fmt.Errorf("release %s: %w", path, err)
	}
	if fst.Dev != st.Dev || fst.Ino != st.Ino {
		return fmt.Errorf("release %s: file replaced while being released", path)
	}
	info, err := stub.Read(fd)
	if err != nil {
		return fmt.Errorf("release %s: %w", path, err)
	}
	if info.State != stub.Released {
		return fmt.Errorf("release %s: stub state is %q, want %q before the hole is punched", path, info.State, stub.Released)
	}
	if info.Size != fst.Size {
		return fmt.Errorf("release %s: archived size %d differs from file size %d", path, info.Size, fst.Size)
	}
	if err := unix.FanotifyMark(i.g.fd, unix.FAN_MARK_ADD, i.g.mask, fd, ""); err != nil {
		return fmt.Errorf("release %s: mark: %w", path, explainMarkErr(err))
	}
	if err := i.GuardStub(fd); err != nil {
		// Nothing punched: the file is whole and marked; its first access
		// finds every chunk full and clears the state.
		return fmt.Errorf("release %s: register with the probe guard: %w", path, err)
	}
	// Whole blocks up to past EOF, or all but the resident head and tail
	// (Config.ResidentHead, ResidentTail): a punch that ends inside the
	// last block only zeroes its tail and keeps the block as data, and
	// data is what fills never overwrite.
	l := stub.LayoutOf(fst.Size, i.cfg.ResidentHead, i.cfg.ResidentTail, int64(fst.Blksize))
	defer func() {
		// A stub must hold no data where it was punched (see fillRange):
		// check it.
		if d, err := unix.Seek(fd, l.PunchLo, unix.SEEK_DATA); err == nil && d < min(l.PunchHi, fst.Size) && !l.Empty() && retErr == nil {
			retErr = fmt.Errorf("release %s: data left at offset %d after punching the hole", path, d)
		}
	}()
	if !l.Empty() {
		if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, l.PunchLo, l.PunchHi-l.PunchLo); err != nil {
			// The file is intact and marked; its first access recalls
			// nothing (every chunk holds data) and clears the state.
			return fmt.Errorf("release %s: punch hole: %w", path, err)
		}
	}
	return nil
}

// dropStale forgets the recall of key if it is finished or belongs to a
// deleted file (its inode number may now name a new file). A recall in
// progress on a live file is kept: dropping it could let its fills race
// with a new recall of the same file.
func (i *Interceptor) dropStale(key inodeKey) {
	i.mu.Lock()
	r := i.mu.recalls[key]
	if r == nil {
		i.mu.Unlock()
		return
	}
	r.mu.Lock()
	done := r.mu.done && !r.mu.finishing
	r.mu.Unlock()
	stale := false
	switch {
	case done || !r.useFD():
		stale = true
	default:
		var st unix.Stat_t
		stale = unix.Fstat(r.fd, &st) == nil && st.Nlink == 0
		r.doneFD()
	}
	if stale {
		delete(i.mu.recalls, key)
	}
	i.mu.Unlock()
	if stale {
		// Its fds (a finish that failed after the proof left them open,
		// and a deleted file may still be filling) close after their
		// last use; not under i.mu, which a finish may be waiting for.
		i.work.Add(1)
		go func() {
			defer i.work.Done()
			r.closeFD()
		}()
	}
}

func explainMarkErr(err error) error {
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%w (pre-content marks need Linux >= 6.14 and ext4, XFS or btrfs)", err)
	}
	return err
}

// Close stops the interceptor: it stops fetching in the background, lets
// fills that hold a program finish for up to StopTimeout (after which
// those programs get EIO), answers the events queued, and closes its
// group fd. With a holder, the holder keeps the group and its marks
// ("park"): programs touching stubs wait for the next daemon up to
// HolderGrace, then get EIO. Without one, every mark is removed first,
// and stubs are unguarded after Close (see the package doc). Close is
// idempotent.
func (i *Interceptor) Close() error {
	if i == nil {
		return nil
	}
	i.mu.Lock()
	if i.mu.closed {
		i.mu.Unlock()
		return nil
	}
	i.mu.closed = true
	i.mu.Unlock()

	i.bgCancel()
	timer := time.AfterFunc(i.cfg.StopTimeout, i.fgCancel)
	defer timer.Stop()
	if err := i.g.stopRead(); err != nil {
		i.log.Error("stop fanotify reader", "err", err)
	}
	<-i.readerDone
	// With a holder the marks stay: it keeps them, and the events that
	// come after this drain, for the next daemon (see park below).
	// Without one the marks go, so that the drain ends; the events already
	// queued are answered, with recalls, as long as fgCtx lives.
	if i.hc == nil {
		if err := i.g.flush(); err != nil {
			i.log.Error("flush fanotify marks", "err", err)
		}
	}
	buf := make([]byte, readBufSize)
	for range 64 { // with marks, events may keep coming: what is queued now
		n, err := i.g.readNow(buf)
		if err != nil {
			i.log.Error("drain fanotify queue", "err", err)
			break
		}
		if n == 0 {
			break
		}
		i.dispatch(buf[:n])
	}
	i.work.Wait()
	i.fgCancel()
	i.mu.Lock()
	for k, r := range i.mu.recalls {
		r.closeFD()
		delete(i.mu.recalls, k)
	}
	i.mu.Unlock()
	if i.hc != nil {
		// Every event this daemon read is answered: the holder keeps the
		// group, its marks and what is queued, as after a crash.
		if err := i.hc.park(); err != nil {
			i.log.Error("park the fanotify group with the holder; releasing it: stubs read as zeros until the next start", "err", err)
			if err := i.g.flush(); err != nil {
				i.log.Error("flush fanotify marks", "err", err)
			}
			if err := i.hc.drop(); err != nil {
				i.log.Error("release the fanotify group from the holder", "err", err)
			}
		} else {
			i.log.Info("the holder keeps stubs guarded while no daemon runs", "grace", i.cfg.HolderGrace)
		}
		i.hc.close()
	}
	i.jr.close()
	i.pub.close(5 * time.Second)
	if err := i.g.close(); err != nil {
		return fmt.Errorf("close fanotify group: %w", err)
	}
	i.log.Info("interceptor closed")
	return nil
}

func (i *Interceptor) readLoop() {
	defer close(i.readerDone)
	buf := make([]byte, readBufSize)
	for {
		n, err := i.g.read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			i.log.Error("read fanotify events; events are no longer answered", "err", err)
			return
		}
		i.dispatch(buf[:n])
	}
}

// dispatch starts one handler per event. It does no file I/O.
func (i *Interceptor) dispatch(b []byte) {
	now := time.Now()
	err := parseEvents(b, func(ev event, bad error) {
		ev.at = now
		i.stats.events.Add(1)
		if ev.mask&unix.FAN_Q_OVERFLOW != 0 || ev.fd < 0 {
			// With FAN_UNLIMITED_QUEUE this should not happen; permission
			// events are never dropped silently by the kernel.
			i.stats.overflows.Add(1)
			i.log.Error("fanotify queue overflow")
			if i.cfg.OnOverflow != nil {
				i.work.Add(1)
				go func() {
					defer i.work.Done()
					i.cfg.OnOverflow()
				}()
			}
			return
		}
		if bad != nil {
			i.log.Error("malformed fanotify event; denying", "err", bad)
			i.answer(ev, unix.EIO, 0)
			return
		}
		i.work.Add(1)
		go func() {
			defer i.work.Done()
			if w := i.orphanWait(ev.fd); w != nil {
				if ev.pid == i.pid && i.serveOverOrphan(ev) {
					return
				}
				<-w // its number still names an orphan: answering now would release the orphan
			}
			seq := i.jr.begin(ev)
			errno := i.decide(ev)
			i.jr.answering(ev.fd, seq, errno)
			i.answer(ev, errno, seq)
		}()
	})
	if err != nil {
		i.log.Error("malformed fanotify buffer", "err", err)
	}
}

// answer closes the event's fd, writes its response and clears its journal
// slot (token seq; 0 for an event not journaled), before any read can give
// the fd's number to another event: so a slot never outlives its event
// while a newer event holds its number (a restarted daemon answering the
// slot would release that one, unfilled).
func (i *Interceptor) answer(ev event, errno unix.Errno, seq uint64) {
	if errno == 0 {
		i.stats.allowed.Add(1)
	} else {
		i.stats.denied.Add(1)
	}
	err := i.g.closeAndRespond(ev.fd, errno, func() {
		i.failpoint(FailAfterAnswer, ev.pid)
		i.jr.end(ev.fd, seq)
	})
	if err != nil {
		i.log.Error("answer fanotify event", "err", err)
	}
	if i.cfg.OnAnswer != nil && !ev.at.IsZero() {
		i.cfg.OnAnswer(time.Since(ev.at), errno != 0)
	}
}

// firstAnswer reports, once per recall, the answer to the access that
// started it (Config.OnFirstByte).
func (i *Interceptor) firstAnswer(r *recall, ev event, errno unix.Errno) {
	if r == nil || i.cfg.OnFirstByte == nil || ev.pid == i.pid || !r.firstAnswered.CompareAndSwap(false, true) {
		return
	}
	r.mu.Lock()
	tier := r.mu.tier
	r.mu.Unlock()
	start := ev.at
	if start.IsZero() {
		start = r.start
	}
	i.cfg.OnFirstByte(tier, time.Since(start), errno != 0)
}

// decide handles one permission event and returns 0 to allow or the errno
// to deny with.
func (i *Interceptor) decide(ev event) (errno unix.Errno) {
	i.log.Debug("event", "mask", ev.mask, "pid", ev.pid, "has_range", ev.hasRange, "off", ev.off, "count", ev.count)
	if ev.pid == i.pid && i.isSelf(ev) {
		return 0 // a store of this process through a fd that raises events
	}
	if i.mode == ModePreAccess && ev.mask&unix.FAN_OPEN_PERM != 0 && ev.pid == i.pid {
		// The daemon's own opens (the scanner reading an inode generation
		// just as the file became a stub) recall nothing: in this mode the
		// open mark only guards small stubs against other programs' hole
		// probing, and the daemon's own reads raise FAN_PRE_ACCESS.
		return 0
	}
	var st unix.Stat_t
	if err := unix.Fstat(ev.fd, &st); err != nil {
		i.log.Error("fstat event fd", "err", err)
		return unix.EIO
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		_ = i.g.unmarkFD(ev.fd)
		return 0
	}
	key := inodeKey{st.Dev, st.Ino}

	i.mu.Lock()
	r := i.mu.recalls[key]
	releasing := i.mu.releasing[key]
	i.mu.Unlock()
	if releasing != nil {
		if ev.pid == i.pid {
			return 0 // the punch of Release, or this process reading data that is still there
		}
		<-releasing
		i.mu.Lock()
		r = i.mu.recalls[key]
		i.mu.Unlock()
	}
	if errno, done := i.programRule(ev, &st, key, r); done {
		return errno
	}
	if r == nil {
		info, err := stub.Read(ev.fd)
		switch {
		case errors.Is(err, stub.ErrNotManaged):
			i.log.Warn("marked file has no stub xattrs; unmarking", "path", fdPath(ev.fd))
			_ = i.g.unmarkFD(ev.fd)
			return 0
		case err != nil:
			i.fail(Failure{Path: fdPath(ev.fd), PID: ev.pid, Process: comm(ev.pid), Err: fmt.Errorf("read stub xattrs: %w", err)})
			return unix.EIO
		case info.State != stub.Released:
			_ = i.g.unmarkFD(ev.fd) // resident and archived: nothing to guard
			return 0
		case i.mode == ModePreAccess && ev.mask&unix.FAN_PRE_ACCESS != 0 && ev.hasRange && i.servedResident(ev, key, &st, info):
			return 0 // only resident bytes (a head, filled chunks): no recall (partial.go)
		case i.openNeedsNoRecall(ev, info):
			return 0 // recalled by range as it is read
		}
		nr, err := newRecall(i, ev, key, &st, info)
		if err != nil {
			i.fail(Failure{FileID: info.FileID, ObjectID: info.ObjectID, ReleaseID: info.ReleaseID, Path: fdPath(ev.fd), PID: ev.pid, Process: comm(ev.pid), Err: err})
			return unix.EIO
		}
		i.mu.Lock()
		if r = i.mu.recalls[key]; r == nil {
			r = nr
			i.mu.recalls[key] = r
		}
		i.mu.Unlock()
		if r != nr {
			nr.closeFD() // another event's recall won
		} else if ev.pid != i.pid {
			off, n := ev.off, ev.count
			if !ev.hasRange {
				off, n = 0, info.Size
			}
			i.pub.requested(info, nr.path, off, n, ev.pid, nr.process)
		}
		if r == nr && r.checkComplete() {
			i.work.Add(1)
			go r.finish()
		}
	}

	// The answer to the first access of r that needs bytes is its
	// time to first byte (an open of a large stub needs none).
	needsBytes := false
	defer func() {
		if needsBytes {
			i.firstAnswer(r, ev, errno)
		}
	}()
	r.sawSize(st.Size)
	var lo, hi int64
	whole := false
	switch {
	case ev.mask&unix.FAN_OPEN_PERM != 0:
		if i.mode == ModePreAccess && r.info.Size >= i.cfg.WholeFileBelow && !i.isProgram(ev.pid, i.cfg.WholeFilePrograms) &&
			(r.nocm >= 0 || !i.isProgram(ev.pid, i.cfg.MtimeCheckPrograms)) {
			return 0 // large: recalled range by range as it is accessed
		}
		lo, hi, whole = 0, r.info.Size, true
	case !ev.hasRange:
		lo, hi = 0, r.info.Size
	case ev.count == 0:
		// A truncate to off, or a clone of the file from off to its end
		// (FICLONE, FICLONERANGE with length 0): the kernel reports both
		// as an access of 0 bytes at off, and they cannot be told apart.
		// Fill everything from off on first (a clone reads it; a truncate
		// throws it away, a cost only truncate(2) and ftruncate pay:
		// O_TRUNC raises no event), then no fill may write at or past off.
		needsBytes = true
		if err := r.ensure(i.fgCtx, ev.off, r.info.Size); err != nil {
			if errors.Is(err, errDropped) {
				return i.decide(ev)
			}
			i.fail(Failure{FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path,
				Offset: ev.off, Length: r.info.Size - ev.off, PID: ev.pid, Process: comm(ev.pid), Err: err})
			return errnoFor(err)
		}
		r.truncate(ev.off)
		return 0
	default:
		lo, hi = ev.off, ev.off+ev.count
	}
	i.failpoint(FailAfterEvent, ev.pid)
	needsBytes = true
	err := r.ensure(i.fgCtx, lo, hi)
	if tlo, thi := r.tail(max(int64(st.Blksize), 4096)); err == nil && thi > 0 {
		err = r.ensure(i.fgCtx, tlo, thi)
	}
	if errors.Is(err, errDropped) {
		return i.decide(ev) // dropped while idle before this event used it: decide with a new one
	}
	if err != nil {
		var fe *fillError
		off, n := lo, hi-lo
		if errors.As(err, &fe) {
			off, n = fe.off, fe.n
		}
		i.fail(Failure{FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path,
			Offset: off, Length: n, PID: ev.pid, Process: comm(ev.pid), Err: err})
		return errnoFor(err)
	}
	i.failpoint(FailAfterFill, ev.pid)
	if whole {
		// Recalled at open: let the stub be proven, lose its mark and
		// close every writable fd before the program goes on (an exec
		// must not find a writer).
		if err := r.awaitProof(i.fgCtx); err != nil {
			if errors.Is(err, errDropped) {
				return i.decide(ev)
			}
			i.fail(Failure{FileID: r.info.FileID, ObjectID: r.info.ObjectID, ReleaseID: r.info.ReleaseID, Path: r.path,
				Offset: lo, Length: hi - lo, PID: ev.pid, Process: comm(ev.pid), Err: err})
			return errnoFor(err)
		}
		return 0
	}
	if !i.rules.throttled(r.info) {
		r.accessed(lo, hi)
	} else {
		r.idleLater() // no background fill; dropped once idle all the same
	}
	return 0
}

// selfAccess records that this process is about to access [lo, hi) of
// the stub key through a fd that raises events; call the result when done.
func (i *Interceptor) selfAccess(key inodeKey, lo, hi int64) (done func()) {
	r := [2]int64{lo &^ 4095, (hi + 4095) &^ 4095} // events report whole pages
	i.self.Lock()
	i.self.m[key] = append(i.self.m[key], r)
	i.self.Unlock()
	return func() {
		i.self.Lock()
		defer i.self.Unlock()
		rs := i.self.m[key]
		if j := slices.Index(rs, r); j >= 0 {
			rs = slices.Delete(rs, j, j+1)
		}
		if len(rs) == 0 {
			delete(i.self.m, key)
		} else {
			i.self.m[key] = rs
		}
	}
}

// isSelf reports whether ev, an event of this process, lies within an
// access recorded by selfAccess.
func (i *Interceptor) isSelf(ev event) bool {
	if ev.mask&unix.FAN_PRE_ACCESS == 0 || !ev.hasRange {
		return false
	}
	i.self.Lock()
	empty := len(i.self.m) == 0
	i.self.Unlock()
	if empty {
		return false
	}
	var st unix.Stat_t
	if unix.Fstat(ev.fd, &st) != nil {
		return false
	}
	i.self.Lock()
	defer i.self.Unlock()
	for _, r := range i.self.m[inodeKey{st.Dev, st.Ino}] {
		if r[0] <= ev.off && ev.off+ev.count <= r[1] {
			return true
		}
	}
	return false
}

func (i *Interceptor) fail(f Failure) {
	i.log.Warn("recall failed", "path", f.Path, "file_id", f.FileID, "offset", f.Offset,
		"length", f.Length, "background", f.Background, "err", f.Err)
	i.pub.failed(f)
	if i.cfg.OnFail != nil {
		i.cfg.OnFail(f)
	}
}

// errnoFor picks the errno a denied program sees: ENOSPC or EDQUOT when
// the local write failed for lack of space, else EIO.
func errnoFor(err error) unix.Errno {
	switch {
	case errors.Is(err, unix.ENOSPC):
		return unix.ENOSPC
	case errors.Is(err, unix.EDQUOT):
		return unix.EDQUOT
	}
	return unix.EIO
}

func fdPath(fd int) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return ""
	}
	return p
}

// isProgram reports whether the process pid is one of programs
// (Config.WholeFilePrograms, Config.MtimeCheckPrograms), by its name or its
// executable's base name.
func (i *Interceptor) isProgram(pid int32, programs []string) bool {
	if len(programs) == 0 || pid <= 0 {
		return false
	}
	name := comm(pid)
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	exe = filepath.Base(exe)
	return slices.ContainsFunc(programs, func(p string) bool { return p == name || p == exe })
}

func comm(pid int32) string {
	if pid <= 0 {
		return ""
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
