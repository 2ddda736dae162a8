//go:build linux

package modwatch

// The modification watcher. It is driven by the kernel, and by the log
// for which files to watch:
//
//	consumes  fanotify notifications (FAN_MODIFY, FAN_CLOSE_WRITE) on stubs
//	          and clean recalled files (inode marks, never permission events)
//	          strata.<host>.file.released, recall.completed, file.moved (mark)
//	          and file.modified (unmark), followed from the catalog's sequence
//	emits     strata.<host>.file.modified  at the first write into a watched file
//
// Message ids are those of stub.Modified (file, object, observed size,
// mtime and ctime): the same observation published again, by this stage
// or by the reconciler, is recorded once.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/stub"
)

// watchCatalog is what the watcher reads of the catalog at start.
type watchCatalog interface {
	LastSeq() uint64
	Files(prefix string, fn func(catalog.File) error) error
}

// Config configures a Watcher.
type Config struct {
	Host    string              // events of this host are followed
	JS      jetstream.JetStream // the event log
	Emitter *pipeline.Emitter   // publishes file.modified
	Catalog watchCatalog        // the files to watch at start
	Roots   []string            // the hot trees: only files inside them are watched
	Logger  *slog.Logger
}

// Validate reports a configuration the watcher cannot run with.
func (c *Config) Validate() error {
	switch {
	case c.JS == nil:
		return pipeline.BadConfig("modwatch.js", nil, "no event log")
	case c.Emitter == nil:
		return pipeline.BadConfig("modwatch.emitter", nil, "no emitter")
	case c.Catalog == nil:
		return pipeline.BadConfig("modwatch.catalog", nil, "no catalog")
	case c.Logger == nil:
		return pipeline.BadConfig("modwatch.logger", nil, "no logger")
	case !events.ValidToken(c.Host):
		return pipeline.BadConfig("modwatch.host", c.Host, "not a subject token")
	}
	return nil
}

type inodeKey struct{ dev, ino uint64 }

// observation is what a report saw of a file: the id of its file.modified
// is made of these (stub.Modified).
type observation struct {
	key                    inodeKey
	size, mtimeNS, ctimeNS int64
}

// recentReports bounds the reports remembered against repeats.
const recentReports = 4096

// fileKey is a file id (32 hex digits) in 16 bytes: the watcher keeps one
// per watched file, and there may be millions of them.
type fileKey [16]byte

func keyOf(fileID string) (fileKey, bool) {
	var k fileKey
	n, err := hex.Decode(k[:], []byte(fileID))
	return k, err == nil && n == len(k) && len(fileID) == 2*len(k)
}

// Stats are counters since Open.
type Stats struct {
	Watched   int    `json:"watched"`  // files marked now
	Marked    uint64 `json:"marked"`   // files that became watched
	Reported  uint64 `json:"reported"` // file.modified queued
	Events    uint64 `json:"events"`   // notifications read
	Overflows uint64 `json:"overflows"`
	Seq       uint64 `json:"seq"` // sequence of the last event it followed and applied
}

// Watcher owns one fanotify notification group.
type Watcher struct {
	cfg Config
	log *slog.Logger
	g   *group
	pid int32

	// mu guards files: the inodes marked, each with the file id its
	// xattrs had when it was marked (what an event is checked against;
	// the rest — object, path — is read from the event's fd).
	mu struct {
		sync.Mutex
		files map[inodeKey]fileKey
		// recent are the last reports (at most recentReports): a later
		// event of the log about a file already reported (a
		// recall.completed or file.moved applied after its write) finds
		// the same observation and does not publish it again.
		recent     map[observation]bool
		recentRing []observation
	}
	pub *publisher

	runCtx    context.Context // Run's; for rechecks
	rechecks  sync.WaitGroup
	recheckOn atomic.Bool // a recheck is running

	marked, reported, nevents, overflows, seq atomic.Uint64
}

// Open creates the notification group. It needs CAP_SYS_ADMIN. Nothing is
// marked until Run.
func Open(cfg Config) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g, err := openGroup()
	if err != nil {
		return nil, fmt.Errorf("modwatch: %w", err)
	}
	w := &Watcher{cfg: cfg, log: cfg.Logger, g: g, pid: int32(os.Getpid())}
	w.mu.files = map[inodeKey]fileKey{}
	w.mu.recent = map[observation]bool{}
	w.pub = newPublisher(cfg.Emitter, cfg.Logger)
	return w, nil
}

// Stats returns the counters.
func (w *Watcher) Stats() Stats {
	w.mu.Lock()
	n := len(w.mu.files)
	w.mu.Unlock()
	return Stats{Watched: n, Marked: w.marked.Load(), Reported: w.reported.Load(),
		Events: w.nevents.Load(), Overflows: w.overflows.Load(), Seq: w.seq.Load()}
}

// Watching reports whether the file at path is marked now.
func (w *Watcher) Watching(path string) bool {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.mu.files[inodeKey{st.Dev, st.Ino}]
	return ok
}

// Run marks the catalog's stubs and clean recalled files, follows the log
// for files that become either, and reports writes into them, until ctx
// ends. It then closes the group (every mark goes with it) and publishes
// what is queued for up to 5 seconds. Run is called once.
func (w *Watcher) Run(ctx context.Context) error {
	w.runCtx = ctx // before the reader starts: it reads it
	from := w.cfg.Catalog.LastSeq() + 1
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		w.readLoop()
	}()
	defer func() {
		if err := w.g.stopRead(); err != nil {
			w.log.Error("stop the modification watcher's reader", "err", err)
		}
		<-readerDone
		if err := w.g.close(); err != nil {
			w.log.Error("close the modification watcher's group", "err", err)
		}
		w.pub.close(5 * time.Second)
	}()
	defer w.rechecks.Wait()
	n := w.markCatalog(ctx)
	w.log.Info("watching archived files for writes", "files", n, "from_seq", from)
	return w.follow(ctx, from)
}

// markCatalog watches every file the catalog holds as released or
// archived (watch compares each with its xattrs right after its mark) and
// returns how many it watches.
func (w *Watcher) markCatalog(ctx context.Context) int {
	n := 0
	for _, root := range w.cfg.Roots {
		err := w.cfg.Catalog.Files(root, func(f catalog.File) error {
			if f.State == catalog.StateReleased || f.State == catalog.StateArchived {
				if w.watch(f.Path, f.ID, f.ObjectID) {
					n++
				}
			}
			return ctx.Err()
		})
		if err != nil && ctx.Err() == nil {
			w.log.Error("watch the catalog's archived files; writes into them are found at the next scan", "root", root, "err", err)
		}
	}
	return n
}

// follow applies the log's events from sequence from on, restarting after
// a failure where it stopped.
func (w *Watcher) follow(ctx context.Context, from uint64) error {
	filter := []string{
		events.Subject(w.cfg.Host, events.KindFileReleased),
		events.Subject(w.cfg.Host, events.KindRecallCompleted),
		events.Subject(w.cfg.Host, events.KindFileMoved),
		events.Subject(w.cfg.Host, events.KindFileModified),
	}
	next := from
	wait := time.Second
	for {
		err := pipeline.FollowRecords(ctx, w.cfg.JS, next, pipeline.FollowOptions{Filter: filter, Logger: w.log},
			func(recs []pipeline.Record) error {
				for _, r := range recs {
					w.apply(r.Event)
					next = r.Seq + 1
					w.seq.Store(r.Seq)
				}
				wait = time.Second
				return nil
			})
		if ctx.Err() != nil {
			return nil
		}
		w.log.Error("follow the log for archived files to watch; restarting", "err", err, "seq", next, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// apply marks or unmarks the file an event of the log names.
func (w *Watcher) apply(ev events.Event) {
	switch e := ev.(type) {
	case *events.FileReleased:
		w.watch(e.Path, e.FileID, e.ObjectID)
	case *events.RecallCompleted:
		w.watch(e.Path, e.FileID, e.ObjectID)
	case *events.FileMoved:
		w.watch(e.Path, e.FileID, "")
	case *events.FileModified:
		w.unwatch(e.Path, e.FileID)
	}
}

// inRoots reports whether p is inside a hot tree.
func (w *Watcher) inRoots(p string) bool {
	for _, r := range w.cfg.Roots {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

// watch marks the file at path if its xattrs say it is fileID (archived
// as objectID, unless objectID is empty), a stub or a clean recalled file.
// Right after the mark, a file whose size or mtime is no longer the
// archived one (written before the mark) is reported. It opens nothing,
// so it raises no event on a stub. It reports whether the file is watched.
func (w *Watcher) watch(path, fileID, objectID string) bool {
	id, ok := keyOf(fileID)
	if !ok || !w.inRoots(path) {
		return false
	}
	info, err := stub.ReadPath(path)
	if err != nil || info.FileID != fileID || (objectID != "" && info.ObjectID != objectID) {
		return false // not that file any more: a later event names what it is
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	key := inodeKey{st.Dev, st.Ino}
	if err := w.g.mark(path); err != nil {
		if !errors.Is(err, unix.ENOENT) {
			w.log.Warn("watch an archived file for writes; a write is found at the next scan", "path", path, "err", err)
		}
		return false
	}
	var after unix.Stat_t
	if err := unix.Lstat(path, &after); err != nil || (inodeKey{after.Dev, after.Ino}) != key {
		// Replaced between the two looks: the mark is on whichever file
		// the path named, and goes at that file's first event (unknown).
		return false
	}
	w.mu.Lock()
	if old, ok := w.mu.files[key]; !ok || old != id {
		w.marked.Add(1)
	}
	w.mu.files[key] = id
	w.mu.Unlock()
	if changed(info, &after) {
		w.report(key, id, info, path, stub.FileStat(&after, 0), func() error { return w.g.unmark(path) })
		return false
	}
	return true
}

// changed reports whether st is no longer the archived content info
// describes: its size, or (for a resident file) its mtime, moved. A stub's
// mtime may be stamped for a moment while a fill stores into it on ext4
// (the interceptor puts it back), so only its size counts here; a write
// into a stub raises FAN_MODIFY anyway.
func changed(info stub.Info, st *unix.Stat_t) bool {
	if info.State == stub.Released {
		return st.Size != info.Size
	}
	return !info.Unchanged(st.Size, st.Mtim.Nano())
}

// unwatch removes the mark of the file fileID at path (a modification
// someone else reported), if it is watched. A file that moved since keeps
// its mark until its next event: a write then is reported once more.
func (w *Watcher) unwatch(path, fileID string) {
	id, ok := keyOf(fileID)
	var st unix.Stat_t
	if !ok || unix.Lstat(path, &st) != nil {
		return
	}
	key := inodeKey{st.Dev, st.Ino}
	w.mu.Lock()
	if w.mu.files[key] != id {
		w.mu.Unlock()
		return
	}
	delete(w.mu.files, key)
	w.mu.Unlock()
	if err := w.g.unmark(path); err != nil && !errors.Is(err, unix.ENOENT) {
		w.log.Debug("unmark a modified file", "path", path, "err", err)
	}
}

// report queues file.modified for the watched file key (id, archived as
// info says, seen at path with st) and forgets it; unmark removes its
// mark.
func (w *Watcher) report(key inodeKey, id fileKey, info stub.Info, path string, st events.FileStat, unmark func() error) {
	w.forget(key, id)
	if err := unmark(); err != nil && !errors.Is(err, unix.ENOENT) {
		w.log.Debug("unmark a modified file", "path", path, "err", err)
	}
	obs := observation{key, st.Size, st.MtimeNS, st.CtimeNS}
	w.mu.Lock()
	seen := w.mu.recent[obs]
	if !seen {
		if len(w.mu.recentRing) == recentReports {
			delete(w.mu.recent, w.mu.recentRing[0])
			w.mu.recentRing = w.mu.recentRing[1:]
		}
		w.mu.recent[obs] = true
		w.mu.recentRing = append(w.mu.recentRing, obs)
	}
	w.mu.Unlock()
	if seen {
		return // reported already; its id would be the same
	}
	w.reported.Add(1)
	w.log.Info("archived file modified", "path", path, "file_id", info.FileID, "size", st.Size)
	ev, evID := stub.Modified(info.FileID, info.ObjectID, path, st)
	w.pub.send(ev, evID)
}

// forget drops the watched file key if it is still id.
func (w *Watcher) forget(key inodeKey, id fileKey) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if old, ok := w.mu.files[key]; ok && old == id {
		delete(w.mu.files, key)
	}
}

// readLoop reads the group until stopRead.
func (w *Watcher) readLoop() {
	buf := make([]byte, readBufSize)
	for {
		n, err := w.g.read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			w.log.Error("read the modification watcher's events; writes are found at the next scan only", "err", err)
			return
		}
		if err := parseEvents(buf[:n], w.handle); err != nil {
			w.log.Error("malformed fanotify buffer", "err", err)
		}
	}
}

// handle takes one notification: a write (FAN_MODIFY) is a modification; a
// close after writing (FAN_CLOSE_WRITE) is one if the size or mtime moved.
// It reads the event fd's xattrs and stat only, never its data.
func (w *Watcher) handle(ev event) {
	w.nevents.Add(1)
	if ev.mask&unix.FAN_Q_OVERFLOW != 0 || ev.fd < 0 {
		w.overflows.Add(1)
		w.log.Warn("modification watcher's queue overflowed; comparing every archived file with its xattrs")
		w.recheck()
		return
	}
	defer unix.Close(ev.fd)
	if ev.pid == w.pid {
		return // Strata's own fill, punch or times: not a modification
	}
	var st unix.Stat_t
	if err := unix.Fstat(ev.fd, &st); err != nil {
		return
	}
	key := inodeKey{st.Dev, st.Ino}
	w.mu.Lock()
	id, ok := w.mu.files[key]
	w.mu.Unlock()
	if !ok {
		_ = w.g.unmarkFD(ev.fd) // not watched (any more): its mark goes
		return
	}
	info, err := stub.Read(ev.fd)
	if got, _ := keyOf(info.FileID); err != nil || got != id {
		w.forget(key, id) // no longer that archived file
		_ = w.g.unmarkFD(ev.fd)
		return
	}
	if ev.mask&unix.FAN_MODIFY == 0 && !changed(info, &st) {
		return // opened for writing, closed, nothing written
	}
	if st.Nlink == 0 {
		w.forget(key, id) // deleted: the reconciler records it
		return
	}
	gen, err := unix.IoctlGetUint32(ev.fd, fsIOCGetVersion)
	if err != nil {
		gen = 0
	}
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", ev.fd))
	if err != nil || !strings.HasPrefix(path, "/") || strings.HasSuffix(path, " (deleted)") {
		w.forget(key, id)
		return
	}
	w.report(key, id, info, path, stub.FileStat(&st, uint64(gen)), func() error { return w.g.unmarkFD(ev.fd) })
}

// recheck, after an overflow lost events, compares every file the catalog
// holds as archived with its xattrs (marking it again, which changes
// nothing for a marked file), in the background: the reader goes on.
func (w *Watcher) recheck() {
	ctx := w.runCtx
	if ctx == nil || !w.recheckOn.CompareAndSwap(false, true) {
		return
	}
	w.rechecks.Add(1)
	go func() {
		defer w.rechecks.Done()
		defer w.recheckOn.Store(false)
		w.markCatalog(ctx)
	}()
}

// fsIOCGetVersion is FS_IOC_GETVERSION (_IOR('v', 1, long)).
const fsIOCGetVersion = 0x80087601
