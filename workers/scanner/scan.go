//go:build linux

// Package scanner finds the hot files a Policy says to archive.
//
// Scan walks every root in parallel (a bounded pool of workers sharing a
// stack of directories). Each directory is read with getdents64 through an
// fd, and entries are looked at with fstatat(AT_SYMLINK_NOFOLLOW) relative to
// it: symlinks are never followed, other filesystems mounted inside a root
// are skipped (st_dev differs) unless Policy.CrossFilesystems, and
// non-regular files and Strata's own data directory are skipped. Only a file
// that passes the cheap filters (size, globs, pins, age or watermark) costs
// more: one lgetxattr (stub.ReadPath, which does not open the file) to skip
// stubs and to tell new, archived-clean and dirty files apart, then, for a
// file that is selected and resident, an open + FS_IOC_GETVERSION for the
// inode generation (a stub is never opened).
//
// Scan reads the filesystem only; it changes nothing (directories are opened
// with O_NOATIME where allowed, files too).
package scanner

import (
	"cmp"
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/beneath"
	"github.com/strata-hsm/strata/workers/glob"
	"github.com/strata-hsm/strata/workers/stub"
)

// State of a candidate, from its xattrs.
type State string

// States.
const (
	StateNew           State = "new"            // no strata xattrs
	StateArchivedClean State = "archived-clean" // archived; size and mtime as recorded: release needs no upload
	StateDirty         State = "dirty"          // archived, but size or mtime differs: archive again
)

// Candidate is a file the policy selects now.
type Candidate struct {
	Path string `json:"path"`
	Root string `json:"root"`
	// FileID is the stable id: from the trusted.strata record when
	// present, else derived (see DeriveFileID).
	FileID string          `json:"file_id"`
	Stat   events.FileStat `json:"stat"`
	// Freed is what releasing the file would free: st_blocks × 512.
	Freed  int64  `json:"freed"`
	Reason string `json:"reason"` // events.ReasonPolicy or events.ReasonWatermark
	State  State  `json:"state"`
	// ObjectID is the archived object named by the xattrs (archived-clean
	// and dirty files).
	ObjectID string `json:"object_id,omitempty"`
}

// FSUsage is the state of one hot filesystem when the scan started.
type FSUsage struct {
	Roots     []string `json:"roots"`
	UsedBytes int64    `json:"used_bytes"`
	SizeBytes int64    `json:"size_bytes"` // used + available
	UsedPct   float64  `json:"used_pct"`
	// AboveHigh: usage was above the high watermark; Need is how many
	// bytes must be freed to reach the low watermark.
	AboveHigh bool  `json:"above_high"`
	Need      int64 `json:"need"`
}

// Summary counts what a scan saw.
type Summary struct {
	Dirs          int64 `json:"dirs"`     // directories read
	Files         int64 `json:"files"`    // regular files seen
	Bytes         int64 `json:"bytes"`    // their total size
	Selected      int64 `json:"selected"` // candidates passed to fn
	SelectedBytes int64 `json:"selected_bytes"`
	Freed         int64 `json:"freed"` // sum of Candidate.Freed
	Symlinks      int64 `json:"symlinks"`
	Special       int64 `json:"special"`  // FIFOs, sockets, devices
	OtherFS       int64 `json:"other_fs"` // entries on another filesystem, not entered
	Released      int64 `json:"released"` // stubs, skipped
	Pinned        int64 `json:"pinned"`   // pinned files and directories, skipped
	Excluded      int64 `json:"excluded"` // by the globs
	// Why the other regular files were not chosen (each counted once, by
	// the first test it failed): smaller than MinSize, holding no blocks
	// (empty, sparse or inline: releasing frees nothing), younger than
	// the policy's age (and not taken by a watermark).
	TooSmall    int64         `json:"too_small"`
	NoBlocks    int64         `json:"no_blocks"`
	TooYoung    int64         `json:"too_young"`
	Errors      int64         `json:"errors"`
	FirstErrors []string      `json:"first_errors,omitempty"` // at most maxErrors
	Filesystems []FSUsage     `json:"filesystems"`
	Duration    time.Duration `json:"duration_ns"`
}

const maxErrors = 20

// fsIOCGetVersion is FS_IOC_GETVERSION (_IOR('v', 1, long)).
const fsIOCGetVersion = 0x80087601

// Scan walks p.Roots and calls fn for every file the policy selects at
// time now. fn is called from one goroutine at a time; an error from fn
// stops the scan and is returned. Policy candidates are passed as they are
// found; watermark candidates (oldest first) after the walk. Errors on
// single entries (a directory that cannot be read, a file that vanished)
// do not stop the scan: they are counted in the Summary.
func Scan(ctx context.Context, p Policy, now time.Time, fn func(Candidate) error) (Summary, error) {
	start := time.Now()
	p.EnsureDefaults()
	if err := p.Validate(); err != nil {
		return Summary{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := &walker{p: &p, now: now, fn: fn, ctx: ctx, cancel: cancel}
	var err error
	if w.inc, err = glob.Compile(p.Include); err != nil {
		return Summary{}, err
	}
	if w.exc, err = glob.Compile(p.Exclude); err != nil {
		return Summary{}, err
	}
	w.q.cond = sync.NewCond(&w.q.mu)
	defer w.closeRoots()
	if err := w.setup(); err != nil {
		return Summary{}, err
	}
	var wg sync.WaitGroup
	for range p.Workers {
		wg.Go(w.work)
	}
	wg.Wait()
	if err := w.err(); err != nil {
		return w.summary(start), err
	}
	for _, fs := range w.fss {
		if err := w.flushWatermark(fs); err != nil {
			return w.summary(start), err
		}
	}
	return w.summary(start), w.err()
}

type rootState struct {
	path string
	// fd is an O_PATH fd of the root: every directory of the walk is
	// opened beneath it (package beneath), so no symlink swapped into the
	// tree during the walk ever leads the walk out of it.
	fd  int
	dev uint64
	fs  *fsState
}

func (w *walker) closeRoots() {
	for _, r := range w.roots {
		unix.Close(r.fd)
	}
}

// openRoot opens a root of the walk as an O_PATH directory fd: beneath
// Policy.Within when set (a directory that strata archive was asked for
// inside a hot tree), else by its path, which must not be a symlink.
func (w *walker) openRoot(r string) (int, error) {
	if w.p.Within != "" {
		return beneath.Open(w.p.Within, r, unix.O_PATH|unix.O_DIRECTORY)
	}
	return unix.Open(r, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// fsState is one hot filesystem and its watermark selection.
type fsState struct {
	dev   uint64
	fsid  [8]byte
	usage FSUsage

	policyFreed atomic.Int64
	mu          struct {
		sync.Mutex
		h     lruHeap // the least recently used files covering Need
		bytes int64   // sum of Freed in h
	}
}

type dirJob struct {
	path, rel string
	root      *rootState
}

type walker struct {
	p        *Policy
	now      time.Time
	inc, exc glob.Set
	fn       func(Candidate) error
	ctx      context.Context
	cancel   context.CancelFunc
	roots    []*rootState
	fss      []*fsState

	dataDev, dataIno uint64
	hasData          bool

	hardlinks sync.Map // [2]uint64{dev, ino} → struct{}

	q struct {
		mu     sync.Mutex
		cond   *sync.Cond
		stack  []dirJob
		active int
		done   bool
	}
	fnMu sync.Mutex
	emu  struct {
		sync.Mutex
		err   error
		first []string
	}
	n struct {
		dirs, files, bytes, selected, selectedBytes, freed atomic.Int64
		symlinks, special, otherFS, released, pinned       atomic.Int64
		excluded, errors                                   atomic.Int64
		tooSmall, noBlocks, tooYoung                       atomic.Int64
	}
}

func (w *walker) setup() error {
	if w.p.DataDir != "" {
		var st unix.Stat_t
		if err := unix.Stat(w.p.DataDir, &st); err == nil {
			w.dataDev, w.dataIno, w.hasData = st.Dev, st.Ino, true
		}
	}
	byDev := map[uint64]*fsState{}
	for _, r := range w.p.Roots {
		rfd, err := w.openRoot(r)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return fmt.Errorf("hot tree %s: not a directory (symlinks are not followed): %w", r, err)
			}
			return fmt.Errorf("hot tree %s: %w", r, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(rfd, &st); err != nil {
			unix.Close(rfd)
			return fmt.Errorf("hot tree %s: %w", r, err)
		}
		fs := byDev[st.Dev]
		if fs == nil {
			var sfs unix.Statfs_t
			if err := unix.Statfs(r, &sfs); err != nil {
				return fmt.Errorf("statfs %s: %w", r, err)
			}
			fs = &fsState{dev: st.Dev}
			binary.LittleEndian.PutUint32(fs.fsid[0:], uint32(sfs.Fsid.Val[0]))
			binary.LittleEndian.PutUint32(fs.fsid[4:], uint32(sfs.Fsid.Val[1]))
			bs := int64(sfs.Bsize)
			used := (int64(sfs.Blocks) - int64(sfs.Bfree)) * bs
			size := used + int64(sfs.Bavail)*bs
			fs.usage = FSUsage{UsedBytes: used, SizeBytes: size}
			if size > 0 {
				fs.usage.UsedPct = 100 * float64(used) / float64(size)
			}
			if w.p.HighWatermark > 0 && fs.usage.UsedPct > w.p.HighWatermark {
				fs.usage.AboveHigh = true
				fs.usage.Need = used - int64(w.p.LowWatermark/100*float64(size))
			}
			byDev[st.Dev] = fs
			w.fss = append(w.fss, fs)
		}
		fs.usage.Roots = append(fs.usage.Roots, r)
		rs := &rootState{path: r, fd: rfd, dev: st.Dev, fs: fs}
		w.roots = append(w.roots, rs)
		if w.p.pinned(r) {
			w.n.pinned.Add(1)
			continue
		}
		w.q.stack = append(w.q.stack, dirJob{path: r, root: rs})
	}
	return nil
}

// fail records a fatal error and stops every worker.
func (w *walker) fail(err error) {
	w.emu.Lock()
	if w.emu.err == nil {
		w.emu.err = err
	}
	w.emu.Unlock()
	w.cancel()
	w.q.mu.Lock()
	w.q.done = true
	w.q.cond.Broadcast()
	w.q.mu.Unlock()
}

func (w *walker) err() error {
	w.emu.Lock()
	defer w.emu.Unlock()
	if w.emu.err == nil && w.ctx.Err() != nil {
		return w.ctx.Err()
	}
	return w.emu.err
}

// soft records an error on one entry; the scan goes on.
func (w *walker) soft(err error) {
	w.n.errors.Add(1)
	w.emu.Lock()
	if len(w.emu.first) < maxErrors {
		w.emu.first = append(w.emu.first, err.Error())
	}
	w.emu.Unlock()
}

func (w *walker) summary(start time.Time) Summary {
	s := Summary{
		Dirs: w.n.dirs.Load(), Files: w.n.files.Load(), Bytes: w.n.bytes.Load(),
		Selected: w.n.selected.Load(), SelectedBytes: w.n.selectedBytes.Load(), Freed: w.n.freed.Load(),
		Symlinks: w.n.symlinks.Load(), Special: w.n.special.Load(), OtherFS: w.n.otherFS.Load(),
		Released: w.n.released.Load(), Pinned: w.n.pinned.Load(), Excluded: w.n.excluded.Load(),
		Errors: w.n.errors.Load(), Duration: time.Since(start),
		TooSmall: w.n.tooSmall.Load(), NoBlocks: w.n.noBlocks.Load(), TooYoung: w.n.tooYoung.Load(),
	}
	w.emu.Lock()
	s.FirstErrors = slices.Clone(w.emu.first)
	w.emu.Unlock()
	for _, fs := range w.fss {
		s.Filesystems = append(s.Filesystems, fs.usage)
	}
	return s
}

// work runs one worker: pop a directory, read it, push its subdirectories.
// The walk ends when the stack is empty and no worker is busy.
func (w *walker) work() {
	buf := make([]byte, 64<<10)
	for {
		w.q.mu.Lock()
		for len(w.q.stack) == 0 && !w.q.done {
			if w.q.active == 0 {
				w.q.done = true
				w.q.cond.Broadcast()
				break
			}
			w.q.cond.Wait()
		}
		if w.q.done {
			w.q.mu.Unlock()
			return
		}
		j := w.q.stack[len(w.q.stack)-1]
		w.q.stack = w.q.stack[:len(w.q.stack)-1]
		w.q.active++
		w.q.mu.Unlock()

		subdirs := w.readDir(j, buf)

		w.q.mu.Lock()
		w.q.active--
		w.q.stack = append(w.q.stack, subdirs...)
		if len(subdirs) > 0 {
			w.q.cond.Broadcast()
		} else if w.q.active == 0 && len(w.q.stack) == 0 {
			w.q.cond.Broadcast()
		}
		w.q.mu.Unlock()
	}
}

func join(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

func joinRel(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

func openNoatime(dirfd int, name string, flags int) (int, error) {
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) { // O_NOATIME needs ownership or CAP_FOWNER
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	return fd, err
}

// readDir reads one directory and returns the subdirectories to walk.
func (w *walker) readDir(j dirJob, buf []byte) []dirJob {
	if w.ctx.Err() != nil {
		return nil
	}
	rel := j.rel
	if rel == "" {
		rel = "."
	}
	fd, err := beneath.OpenAt(j.root.fd, j.root.path, rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME)
	if errors.Is(err, unix.EPERM) { // O_NOATIME needs ownership or CAP_FOWNER
		fd, err = beneath.OpenAt(j.root.fd, j.root.path, rel, unix.O_RDONLY|unix.O_DIRECTORY)
	}
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			w.soft(fmt.Errorf("open directory %s: %w", j.path, err))
		}
		return nil
	}
	defer unix.Close(fd)
	w.n.dirs.Add(1)
	var subdirs []dirJob
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			w.soft(fmt.Errorf("read directory %s: %w", j.path, err))
			return subdirs
		}
		if n == 0 {
			return subdirs
		}
		for off := 0; off < n; {
			// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			typ := buf[off+18]
			nameb := buf[off+19 : off+reclen]
			off += reclen
			l := 0
			for l < len(nameb) && nameb[l] != 0 {
				l++
			}
			nameb = nameb[:l]
			if l == 1 && nameb[0] == '.' || l == 2 && nameb[0] == '.' && nameb[1] == '.' {
				continue
			}
			name := string(nameb)
			switch typ {
			case unix.DT_DIR:
				if sj, ok := w.subdir(fd, j, name); ok {
					subdirs = append(subdirs, sj)
				}
			case unix.DT_REG:
				w.entry(fd, j, name)
			case unix.DT_LNK:
				w.n.symlinks.Add(1)
			case unix.DT_UNKNOWN:
				if sj, ok := w.unknown(fd, j, name); ok {
					subdirs = append(subdirs, sj)
				}
			default:
				w.n.special.Add(1)
			}
		}
		if w.ctx.Err() != nil {
			return nil
		}
	}
}

// unknown handles an entry without d_type (some filesystems).
func (w *walker) unknown(dirfd int, j dirJob, name string) (dirJob, bool) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if !errors.Is(err, unix.ENOENT) {
			w.soft(fmt.Errorf("stat %s: %w", join(j.path, name), err))
		}
		return dirJob{}, false
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return w.subdir(dirfd, j, name)
	case unix.S_IFREG:
		w.entry(dirfd, j, name)
	case unix.S_IFLNK:
		w.n.symlinks.Add(1)
	default:
		w.n.special.Add(1)
	}
	return dirJob{}, false
}

func (w *walker) subdir(dirfd int, j dirJob, name string) (dirJob, bool) {
	path, rel := join(j.path, name), joinRel(j.rel, name)
	if path == w.p.DataDir {
		return dirJob{}, false
	}
	if w.exc.MatchName(rel, name) {
		w.n.excluded.Add(1)
		return dirJob{}, false
	}
	if w.p.pinned(path) {
		w.n.pinned.Add(1)
		return dirJob{}, false
	}
	if !w.p.CrossFilesystems || w.hasData {
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				w.soft(fmt.Errorf("stat %s: %w", path, err))
			}
			return dirJob{}, false
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR { // replaced since getdents
			return dirJob{}, false
		}
		if !w.p.CrossFilesystems && st.Dev != j.root.dev {
			w.n.otherFS.Add(1)
			return dirJob{}, false
		}
		if w.hasData && st.Dev == w.dataDev && st.Ino == w.dataIno {
			return dirJob{}, false
		}
	}
	return dirJob{path: path, rel: rel, root: j.root}, true
}

// entry looks at one regular file.
func (w *walker) entry(dirfd int, j dirJob, name string) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if !errors.Is(err, unix.ENOENT) {
			w.soft(fmt.Errorf("stat %s: %w", join(j.path, name), err))
		}
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		w.n.special.Add(1)
		return
	}
	w.n.files.Add(1)
	w.n.bytes.Add(st.Size)
	if !w.p.CrossFilesystems && st.Dev != j.root.dev { // a bind-mounted file
		w.n.otherFS.Add(1)
		return
	}
	// A file without blocks frees nothing (empty, sparse, inline, or a stub).
	// A stub has (almost) no blocks: none, or the one or two that hold
	// its xattrs. Ask its xattrs whenever the allocation is that small
	// or smaller than the size, so that no stub goes unreported (a stub
	// the walk misses would be taken for deleted).
	if w.p.OnStub != nil && st.Size > 0 && (st.Blocks*512 < st.Size || st.Blocks*512 <= stubSlack) {
		w.reportStub(join(j.path, name))
	}
	if st.Size < w.p.MinSize {
		w.n.tooSmall.Add(1)
		return
	}
	if st.Blocks == 0 {
		w.n.noBlocks.Add(1)
		return
	}
	fs := j.root.fs
	ageOK := w.p.ageOK(w.now, st.Atim.Nano(), st.Mtim.Nano())
	if !ageOK && !fs.usage.AboveHigh {
		w.n.tooYoung.Add(1)
		return
	}
	rel := joinRel(j.rel, name)
	if !w.inc.Empty() && !w.inc.MatchName(rel, name) || w.exc.MatchName(rel, name) {
		w.n.excluded.Add(1)
		return
	}
	path := join(j.path, name)
	if w.p.pinned(path) {
		w.n.pinned.Add(1)
		return
	}
	if st.Nlink > 1 {
		if _, dup := w.hardlinks.LoadOrStore([2]uint64{st.Dev, st.Ino}, struct{}{}); dup {
			return
		}
	}
	key := max(st.Atim.Nano(), st.Mtim.Nano())
	freed := st.Blocks * 512
	if !ageOK && !fs.wouldTake(key) {
		w.n.tooYoung.Add(1) // the watermark is met by older files
		return
	}
	info, managed, ok := w.xattrs(path)
	if !ok {
		return
	}
	if ageOK {
		c, ok := w.finish(dirfd, name, path, j.root, &st, info, managed, events.ReasonPolicy)
		if ok {
			fs.policyFreed.Add(c.Freed)
			w.emit(c)
		}
		return
	}
	fs.offer(lruItem{key: key, freed: freed, path: path, root: j.root, dev: st.Dev, ino: st.Ino, info: info, managed: managed})
}

// stubSlack is the most a stub can have allocated: blocks holding its
// xattrs (ext4 keeps them in one block, XFS in an attribute fork).
const stubSlack = 64 << 10

// reportStub tells Policy.OnStub about a stub (a file with no blocks whose
// xattrs say released).
func (w *walker) reportStub(path string) {
	info, err := stub.ReadPath(path)
	if err == nil && info.State == stub.Released {
		w.p.OnStub(path, info)
	}
}

// xattrs reads the strata xattrs without opening the file; ok is false for
// a stub or on error.
func (w *walker) xattrs(path string) (stub.Info, bool, bool) {
	info, err := stub.ReadPath(path)
	switch {
	case errors.Is(err, stub.ErrNotManaged), errors.Is(err, stub.ErrNoXattr):
		return stub.Info{}, false, true
	case errors.Is(err, unix.ENOENT):
		return stub.Info{}, false, false
	case err != nil:
		w.soft(fmt.Errorf("xattrs of %s: %w", path, err))
		return stub.Info{}, false, false
	case info.State == stub.Released:
		w.n.released.Add(1)
		return stub.Info{}, false, false
	}
	return info, true, true
}

// finish opens a resident file (never a stub: its xattrs were read first)
// to read its inode generation, and builds the candidate from a fresh
// fstat. ok is false if the file vanished or was replaced.
func (w *walker) finish(dirfd int, name, path string, root *rootState, pre *unix.Stat_t, info stub.Info, managed bool, reason string) (Candidate, bool) {
	c, err := candidateAt(dirfd, name, path, root.path, root.fs.fsid, pre, info, managed, reason)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, errReplaced) {
			w.soft(err)
		}
		return Candidate{}, false
	}
	return c, true
}

// errReplaced: the file changed identity between two looks at it.
var errReplaced = errors.New("scanner: file was replaced while being inspected")

// candidateAt builds the candidate for the file name in dirfd, which was
// pre before: it opens the file (never a stub) for its inode generation
// and takes a fresh fstat.
func candidateAt(dirfd int, name, path, root string, fsid [8]byte, pre *unix.Stat_t, info stub.Info, managed bool, reason string) (Candidate, error) {
	fd, err := openNoatime(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		return Candidate{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Candidate{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Dev != pre.Dev || st.Ino != pre.Ino || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Candidate{}, errReplaced // the next scan sees the new file
	}
	gen, err := unix.IoctlGetUint32(fd, fsIOCGetVersion)
	if err != nil {
		if !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EOPNOTSUPP) {
			return Candidate{}, fmt.Errorf("inode generation of %s: %w", path, err)
		}
		gen = 0 // no generations on this filesystem
	}
	c := Candidate{
		Path: path, Root: root, Reason: reason, Freed: st.Blocks * 512,
		Stat:  stub.FileStat(&st, uint64(gen)),
		State: StateNew,
	}
	if managed {
		c.FileID, c.ObjectID = info.FileID, info.ObjectID
		c.State = StateDirty
		if info.Unchanged(st.Size, st.Mtim.Nano()) {
			c.State = StateArchivedClean
		}
	} else {
		c.FileID = DeriveFileID(fsid, st.Ino, uint64(gen))
	}
	return c, nil
}

func (w *walker) emit(c Candidate) {
	w.fnMu.Lock()
	defer w.fnMu.Unlock()
	if w.ctx.Err() != nil {
		return
	}
	if err := w.fn(c); err != nil {
		w.fail(err)
		return
	}
	w.n.selected.Add(1)
	w.n.selectedBytes.Add(c.Stat.Size)
	w.n.freed.Add(c.Freed)
}

// DeriveFileID gives a file without a file_id xattr its stable id:
// hex(sha256(fsid ‖ inode ‖ generation))[:32].
//
// It must be deterministic: the scanner selects a file again and again
// (every rescan, after a crash before the releaser wrote the xattr), and
// every time the file must get the same id, so that its events share one
// entity in the catalog and a retried publish has the same Nats-Msg-Id.
// The statfs fsid (from the filesystem's UUID on ext4 and XFS) is used, not
// st_dev, which changes when a device is attached in another order; the
// generation tells apart files that reuse a freed inode number. The path is
// not used: a rename or a second hard link must keep the id. Once a file is
// archived its id lives in the xattr and the derivation no longer matters.
func DeriveFileID(fsid [8]byte, inode, generation uint64) string {
	var b [24]byte
	copy(b[:8], fsid[:])
	binary.BigEndian.PutUint64(b[8:], inode)
	binary.BigEndian.PutUint64(b[16:], generation)
	s := sha256.Sum256(b[:])
	return hex.EncodeToString(s[:16])
}

// --- watermark selection ----------------------------------------------------

type lruItem struct {
	key      int64 // later of atime and mtime
	freed    int64
	path     string
	root     *rootState
	dev, ino uint64
	info     stub.Info
	managed  bool
}

// lruHeap is a max-heap on key: the most recently used file on top, the
// first to drop when the older ones already cover Need.
type lruHeap []lruItem

func (h lruHeap) Len() int           { return len(h) }
func (h lruHeap) Less(i, j int) bool { return h[i].key > h[j].key }
func (h lruHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *lruHeap) Push(x any)        { *h = append(*h, x.(lruItem)) }
func (h *lruHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// wouldTake reports whether a file with this key would enter the heap
// (checked before paying for its xattrs).
func (fs *fsState) wouldTake(key int64) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.mu.bytes < fs.usage.Need || len(fs.mu.h) > 0 && key < fs.mu.h[0].key
}

// offer adds a file and drops the most recent ones no longer needed to
// cover Need. Memory stays bounded by what Need requires.
func (fs *fsState) offer(it lruItem) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	heap.Push(&fs.mu.h, it)
	fs.mu.bytes += it.freed
	fs.trimLocked(fs.usage.Need)
}

func (fs *fsState) trimLocked(need int64) {
	for len(fs.mu.h) > 0 && fs.mu.bytes-fs.mu.h[0].freed >= need {
		it := heap.Pop(&fs.mu.h).(lruItem)
		fs.mu.bytes -= it.freed
	}
}

// flushWatermark emits, oldest first, the files that bring fs down to the
// low watermark, once the policy candidates' share is known.
func (w *walker) flushWatermark(fs *fsState) error {
	if !fs.usage.AboveHigh {
		return nil
	}
	fs.mu.Lock()
	need := fs.usage.Need - fs.policyFreed.Load()
	var items []lruItem
	if need > 0 {
		fs.trimLocked(need)
		items = slices.Clone(fs.mu.h)
	}
	fs.mu.h, fs.mu.bytes = nil, 0
	fs.mu.Unlock()
	slices.SortFunc(items, func(a, b lruItem) int { return cmp.Compare(a.key, b.key) })
	for _, it := range items {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if need <= 0 {
			break
		}
		pre := unix.Stat_t{Dev: it.dev, Ino: it.ino}
		c, ok := w.finish(unix.AT_FDCWD, it.path, it.path, it.root, &pre, it.info, it.managed, events.ReasonWatermark)
		if !ok {
			continue
		}
		w.emit(c)
		need -= c.Freed
	}
	return w.err()
}
