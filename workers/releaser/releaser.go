//go:build linux

// Package releaser turns an archived hot file into a stub: it sets Strata's
// xattrs, lets the interceptor mark the file, and frees its data blocks with
// fallocate(PUNCH_HOLE|KEEP_SIZE). This is the one step that can lose data if
// it is wrong, so it proves, under a write lease that keeps every other
// process out, that the file is still the one the compressor read.
//
// # Order of a release
//
//  1. Resolve the path beneath one of Request.Roots with openat2
//     (RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, an O_PATH fd: no open side
//     effects, no fanotify event) and check the fd's real path in
//     /proc/self/fd: no escape through "..", symlinks or magic links.
//  2. Refuse non-regular files and filesystems other than ext4, XFS and
//     btrfs (the only ones where pre-content fanotify marks work; tmpfs
//     would take our xattrs but could never recall).
//  3. Reopen O_RDWR|O_NOATIME through the O_PATH fd and take a write lease
//     (F_SETLEASE F_WRLCK). The lease is granted only if no other process
//     has the file open (else ErrBusy), and any later open or truncate by
//     another process blocks until we let go: nobody can write between the
//     check and the mark. From the mark on, the interceptor holds every
//     access by another program until Release returns (Mark/Unhold), and
//     the lease is let go (step 5). Only an O_TRUNC open raises no event:
//     it may empty the file, but what it writes next waits, so no new byte
//     is ever punched.
//  4. fstat + inode generation, compared with Request.Expect
//     (events.FileStat.Diff): any difference is ErrChanged.
//  5. stub.Write (state released; fsynced) — failpoint release.after-xattr
//     — Mark (the interceptor's fanotify mark; it holds every other
//     program's access until the release ends) — failpoint
//     release.after-mark — the lease is handed over to the mark (ErrBusy
//     if anyone opened the file meanwhile; see handOver) —
//     fallocate(PUNCH_HOLE|KEEP_SIZE) of what stub.LayoutOf says (the
//     whole file, or all but a resident head and the block at EOF:
//     Request.ResidentHead) — fsync — failpoint
//     release.after-punch — futimens(atime, mtime) — fsync.
//
// If Mark fails the state goes back to archived (the content is intact and
// equal to the object) and nothing is punched.
//
// # Stat comparison after a release
//
// Setting xattrs, punching and futimens all move ctime (it cannot be set
// from user space). Result.Stat is the file after the release: whoever
// compares later (the catalog, the scanner, a second release after a recall)
// must use it, not Request.Expect. The xattrs record size and mtime, which a
// release keeps, so "archived-clean" is judged on those.
//
// # Redelivery and crashes
//
// A release can be interrupted at any step and the request redelivered. If
// the xattrs already say released with the same object and file id, the
// previous attempt got past its check, and Release finishes the job:
//   - no data extent is left where the release punches (SEEK_DATA; a
//     resident head is not looked at): the punch happened; Mark is
//     called again, atime/mtime restored, Result.AlreadyReleased set;
//   - data is left: the daemon died before the punch (our own xattr write
//     moved ctime, so the stat can no longer prove the content unchanged),
//     or a recall is filling the stub. Release marks and holds the file,
//     hands the lease over to the mark, reads the whole file and punches
//     only if its BLAKE3 equals ObjectID
//     (Result.Verified); otherwise it changes nothing and returns
//     ErrChanged.
//
// A stub of another object or file id is never touched (ErrChanged).
package releaser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/beneath"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/stub"
)

// Failpoints, in the order a release reaches them.
var (
	FailAfterXattr = failpoint.Define("release.after-xattr", "xattrs say released (set before the punch), no byte punched yet")
	FailAfterMark  = failpoint.Define("release.after-mark", "the stub is marked (guarded), no byte punched yet")
	FailAfterPunch = failpoint.Define("release.after-punch", "the hole is punched, times not yet restored")
)

// Errors. ErrChanged and ErrBusy mean "not released, nothing changed, try
// again later" (the caller publishes file.release_skipped); the others are
// refusals that a retry will not fix.
var (
	ErrChanged = errors.New("releaser: file changed since it was read")
	ErrBusy    = errors.New("releaser: file is open by another process")
	// ErrOpenedDuring wraps ErrBusy: another program opened the file after
	// the checks, when our xattr write had already moved its ctime, so a
	// new try with the same expectation would only find it changed; a later
	// scan reads it again.
	ErrOpenedDuring   = fmt.Errorf("%w (opened during its release)", ErrBusy)
	ErrOutsideRoot    = errors.New("releaser: path is outside every hot tree")
	ErrNotRegular     = errors.New("releaser: not a regular file")
	ErrUnsupportedFS  = errors.New("releaser: filesystem cannot hold stubs (need ext4, xfs or btrfs with trusted xattrs)")
	ErrInvalidRequest = errors.New("releaser: invalid request")
)

// fsIOCGetVersion is FS_IOC_GETVERSION (_IOR('v', 1, long)): the inode
// generation. x/sys/unix does not define it.
const fsIOCGetVersion = 0x80087601

// Request asks for one file to be released.
type Request struct {
	Path     string // absolute, clean
	FileID   string // 32 lowercase hex
	ObjectID string // BLAKE3-256 of the content, 64 lowercase hex
	// ReleaseID names this release (stub.Info.ReleaseID): the same for
	// every redelivery of one request, another for the next release.
	ReleaseID string
	// Expect is the file as the compressor read it (or, for an
	// archived-clean file, as the scanner saw it after its xattrs were set).
	Expect events.FileStat
	// Reread says Expect comes from a read of the whole content that
	// hashed to ObjectID (the compressor). Then an archived file whose
	// xattrs record another mtime (a recall's fills move mtime) is known
	// to be unchanged, and is released; without Reread it is refused as
	// modified.
	Reread bool
	// Roots are the hot trees; Path must resolve beneath one of them.
	Roots []string
	// Mark is called after the xattrs are durable and before the hole is
	// punched: the interceptor's FAN_PRE_ACCESS inode mark. May be nil in
	// tests (then the write lease is kept until the punch is done).
	//
	// Measured on Linux 6.18: the kernel decides at open whether a file
	// gets pre-content hooks, so the punch through our fd, opened before
	// Mark, raises no FAN_PRE_ACCESS (the interceptor need not recognise
	// it). Through an fd opened after the mark it would, and the kernel's
	// opening of that event's fd would break our write lease and wait
	// lease-break-time (45 s) for us while we wait for the answer.
	Mark func(path string) error
	// Unhold, if set, is called once the release is over (punched and
	// fsynced, or failed) for every path Mark was called for: the
	// interceptor holds other programs' accesses to a file from its mark
	// until then, so none can read it between the mark and the punch and
	// take data that is about to vanish for filled.
	Unhold func(path string)
	// Guard, if set, is called with the release's fd after Mark and before
	// the punch (and again when a resumed release finds the hole punched):
	// it registers the stub with the probe guard (workers/kernelguard),
	// which stops programs that ask a stub where its data is. If it fails
	// nothing is punched.
	Guard func(fd int) error
	// ResidentHead keeps the first ResidentHead bytes of the file (rounded
	// up to whole blocks) resident, and the block that holds EOF with them
	// (see stub.Layout): `file`, thumbnailers and media probes read them
	// without a recall. 0: the whole file is punched.
	ResidentHead int64
	// ResidentTail keeps the last ResidentTail bytes resident too (`file`
	// reads as much at the end as at the start). 0: only the block at EOF,
	// when a head is kept.
	ResidentTail int64
	// Failpoints armed for crash tests; the zero value arms none.
	Failpoints failpoint.Set
}

// Result describes a released file.
type Result struct {
	// Stat is the stub after the release. Its ctime differs from
	// Request.Expect's (xattrs, punch and futimens move ctime); use it for
	// every later comparison.
	Stat events.FileStat
	// BlocksBefore and BlocksAfter are st_blocks (512-byte units) just
	// before and after the punch; a block for the xattrs may remain.
	BlocksBefore, BlocksAfter int64
	// AlreadyReleased: a previous attempt had punched the hole; only Mark
	// was called again.
	AlreadyReleased bool
	// Verified: an interrupted release was resumed after the content was
	// hashed and found equal to ObjectID.
	Verified bool
}

// Freed returns the bytes of data blocks freed.
func (r Result) Freed() int64 { return (r.BlocksBefore - r.BlocksAfter) * 512 }

// Release makes req.Path a stub of req.ObjectID, or explains why not. See
// the package documentation for the order of steps and their guarantees.
func Release(ctx context.Context, req Request) (Result, error) {
	if err := req.validate(); err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	root, rel, err := withinRoot(req.Path, req.Roots)
	if err != nil {
		return Result{}, err
	}
	pfd, err := openBeneath(root, rel, req.Path)
	if err != nil {
		return Result{}, err
	}
	defer unix.Close(pfd)

	var pst unix.Stat_t
	if err := unix.Fstat(pfd, &pst); err != nil {
		return Result{}, fmt.Errorf("stat %s: %w", req.Path, err)
	}
	if pst.Mode&unix.S_IFMT != unix.S_IFREG {
		return Result{}, fmt.Errorf("%w: %s (mode %o)", ErrNotRegular, req.Path, pst.Mode&unix.S_IFMT)
	}
	if err := checkFS(pfd, req.Path); err != nil {
		return Result{}, err
	}

	// Look at the xattrs without opening the file: it may be a stub.
	resume := false
	info, err := stub.ReadPath(req.Path)
	switch {
	case errors.Is(err, stub.ErrNotManaged):
	case errors.Is(err, stub.ErrNoXattr):
		return Result{}, fmt.Errorf("%w: %s", ErrUnsupportedFS, req.Path)
	case err != nil:
		return Result{}, fmt.Errorf("read xattrs of %s: %w", req.Path, err)
	case info.State == stub.Released && info.ObjectID != req.ObjectID:
		return Result{}, fmt.Errorf("%w: %s is already a stub of object %s, not %s", ErrChanged, req.Path, info.ObjectID, req.ObjectID)
	case info.State == stub.Released && info.FileID != req.FileID:
		return Result{}, fmt.Errorf("%w: %s is a stub of file id %s, not %s", ErrChanged, req.Path, info.FileID, req.FileID)
	case info.State == stub.Released:
		resume = true
	}

	fd, err := reopen(pfd, req.Path)
	if err != nil {
		return Result{}, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Result{}, fmt.Errorf("stat %s: %w", req.Path, err)
	}
	if st.Dev != pst.Dev || st.Ino != pst.Ino {
		return Result{}, fmt.Errorf("%w: %s was replaced while being opened", ErrChanged, req.Path)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EBUSY) {
			return Result{}, fmt.Errorf("%w: %s", ErrBusy, req.Path)
		}
		return Result{}, fmt.Errorf("take write lease on %s: %w", req.Path, err)
	}
	defer unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK) //nolint:errcheck // close drops it anyway

	// Under the lease: the authoritative look.
	if err := unix.Fstat(fd, &st); err != nil {
		return Result{}, fmt.Errorf("stat %s: %w", req.Path, err)
	}
	gen, err := generation(fd)
	if err != nil {
		return Result{}, fmt.Errorf("inode generation of %s: %w", req.Path, err)
	}
	cur := fileStat(&st)
	cur.Generation = gen
	before := st.Blocks

	info, err = stub.Read(fd)
	managed := err == nil
	if err != nil && !errors.Is(err, stub.ErrNotManaged) {
		return Result{}, fmt.Errorf("read xattrs of %s: %w", req.Path, err)
	}
	if managed && (info.State == stub.Released) != resume {
		return Result{}, fmt.Errorf("%w: state of %s changed while being opened", ErrChanged, req.Path)
	}

	verified, held, handed := false, false, false
	if resume {
		// A previous attempt set the xattrs (moving ctime) and may have
		// punched (moving mtime) before it died. The xattrs were written
		// only after the stat proved the content equal to the object.
		e := req.Expect
		e.CtimeNS, e.MtimeNS = cur.CtimeNS, cur.MtimeNS
		if why := e.Diff(cur); why != "" {
			return Result{}, fmt.Errorf("%w: %s: %s", ErrChanged, req.Path, why)
		}
		if cur.Size != info.Size {
			return Result{}, fmt.Errorf("%w: %s no longer matches its xattrs", ErrChanged, req.Path)
		}
		data, err := hasDataIn(fd, stub.LayoutOf(cur.Size, req.ResidentHead, req.ResidentTail, int64(st.Blksize)))
		if err != nil {
			return Result{}, fmt.Errorf("look for data in %s: %w", req.Path, err)
		}
		if !data {
			// The punch happened: mark again and restore the times.
			if req.Mark != nil {
				if req.Unhold != nil {
					defer req.Unhold(req.Path)
				}
				if err := req.Mark(req.Path); err != nil {
					return Result{}, fmt.Errorf("mark stub %s: %w", req.Path, err)
				}
			}
			if req.Guard != nil {
				if err := req.Guard(fd); err != nil {
					return Result{}, fmt.Errorf("register stub %s with the probe guard: %w", req.Path, err)
				}
			}
			cur.MtimeNS = info.MtimeNS
			st, err := finish(fd, req.Path, cur)
			if err != nil {
				return Result{}, err
			}
			out := fileStat(&st)
			out.Generation = gen
			return Result{Stat: out, BlocksBefore: before, BlocksAfter: st.Blocks, AlreadyReleased: true}, nil
		}
		// Data is there, whole or in part: only its hash can prove it is
		// still the object (a partly recalled stub, or a write while the
		// daemon was down, must not be punched). The file may already be
		// marked (a restarted daemon marks what looks like a stub), so
		// hold it first: the interceptor then lets these reads through
		// without starting a recall, whose completion would flip the
		// state under the punch.
		if req.Mark != nil {
			if req.Unhold != nil {
				defer req.Unhold(req.Path)
			}
			if err := req.Mark(req.Path); err != nil {
				return Result{}, fmt.Errorf("mark %s: %w", req.Path, err)
			}
			held = true
			if err := handOver(fd, req.Path); err != nil {
				return Result{}, err
			}
			handed = true
		}
		if err := verifyContent(ctx, fd, req.ObjectID); err != nil {
			return Result{}, fmt.Errorf("%w: interrupted release of %s: %w", ErrChanged, req.Path, err)
		}
		// Say released again, in case anything moved the state meanwhile.
		if err := stub.Write(fd, stub.Info{FileID: req.FileID, ObjectID: req.ObjectID, State: stub.Released, Size: cur.Size, MtimeNS: info.MtimeNS, ReleaseID: req.ReleaseID}); err != nil {
			return Result{}, fmt.Errorf("set xattrs of %s: %w", req.Path, err)
		}
		cur.MtimeNS = info.MtimeNS
		verified = true
	} else {
		if why := req.Expect.Diff(cur); why != "" {
			return Result{}, fmt.Errorf("%w: %s: %s", ErrChanged, req.Path, why)
		}
		if !req.Reread && managed && info.ObjectID == req.ObjectID && (info.Size != cur.Size || info.MtimeNS != cur.MtimeNS) {
			return Result{}, fmt.Errorf("%w: %s was modified since it was archived as %s", ErrChanged, req.Path, req.ObjectID)
		}
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		err := stub.Write(fd, stub.Info{FileID: req.FileID, ObjectID: req.ObjectID, State: stub.Released, Size: cur.Size, MtimeNS: cur.MtimeNS, ReleaseID: req.ReleaseID})
		if err != nil {
			// Some xattrs may be set and some not: a half-written set must
			// not claim anything.
			if cerr := stub.Clear(fd); cerr != nil {
				err = errors.Join(err, fmt.Errorf("clear partial xattrs: %w", cerr))
			}
			if errors.Is(err, stub.ErrNoXattr) {
				return Result{}, fmt.Errorf("%w: %s: %w", ErrUnsupportedFS, req.Path, err)
			}
			return Result{}, fmt.Errorf("set xattrs of %s: %w", req.Path, err)
		}
	}
	req.Failpoints.Hit(FailAfterXattr)

	if req.Mark != nil && !held {
		if req.Unhold != nil {
			defer req.Unhold(req.Path)
		}
		if err := req.Mark(req.Path); err != nil {
			// Nothing is punched: the content is whole and equals the
			// object, so the file is archived-clean.
			if serr := stub.SetState(fd, stub.Archived); serr != nil {
				err = errors.Join(err, fmt.Errorf("reset state to archived: %w", serr))
			}
			return Result{}, fmt.Errorf("mark %s: %w", req.Path, err)
		}
	}
	req.Failpoints.Hit(FailAfterMark)
	if req.Mark != nil && !handed {
		if err := handOver(fd, req.Path); err != nil {
			// The file stays whole, archived-clean, and is released on a
			// later try.
			if serr := stub.SetState(fd, stub.Archived); serr != nil {
				return Result{}, fmt.Errorf("%w; reset state: %w", err, serr)
			}
			return Result{}, err
		}
	}
	if req.Guard != nil {
		if err := req.Guard(fd); err != nil {
			// Nothing punched: whole, archived-clean, released on a later try.
			if serr := stub.SetState(fd, stub.Archived); serr != nil {
				err = errors.Join(err, fmt.Errorf("reset state to archived: %w", serr))
			}
			return Result{}, fmt.Errorf("register %s with the probe guard: %w", req.Path, err)
		}
	}
	if err := unix.Fstat(fd, &st); err != nil { // blocks with the xattrs
		return Result{}, fmt.Errorf("stat %s: %w", req.Path, err)
	}
	before = st.Blocks
	if l := stub.LayoutOf(cur.Size, req.ResidentHead, req.ResidentTail, int64(st.Blksize)); !l.Empty() {
		// On error the state stays released and the mark stays: a partly
		// punched file is recalled on access, never read as zeros.
		// Whole blocks only are freed (KEEP_SIZE: the size does not
		// change): without a head, up past EOF so the partial block at
		// EOF goes too; with one, the head and the block at EOF stay.
		if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, l.PunchLo, l.PunchHi-l.PunchLo); err != nil {
			return Result{}, fmt.Errorf("punch hole in %s: %w", req.Path, err)
		}
	}
	if err := unix.Fsync(fd); err != nil {
		return Result{}, fmt.Errorf("fsync %s after punch: %w", req.Path, err)
	}
	req.Failpoints.Hit(FailAfterPunch)

	st, err = finish(fd, req.Path, cur)
	if err != nil {
		return Result{}, err
	}
	after := fileStat(&st)
	after.Generation = gen
	return Result{Stat: after, BlocksBefore: before, BlocksAfter: st.Blocks, Verified: verified}, nil
}

// handOver ends the write lease once the file is marked and held (Mark):
// from then on the interceptor makes every other program's access wait,
// and the lease must go, because our own reads and punch raise events on a
// file that was marked when we opened it, and the kernel opens an event fd
// for each; that open breaks our own lease, so the kernel would stall the
// event for lease-break-time (45 s) or deny it (EPERM). A descriptor opened
// before the mark never raises an event: if another program opened the
// file since we took the lease (the lease is then being broken), it could
// read the holes about to be punched as zeros, so give up with ErrBusy.
func handOver(fd int, path string) error {
	if t, err := unix.FcntlInt(uintptr(fd), unix.F_GETLEASE, 0); err != nil || t != unix.F_WRLCK {
		return fmt.Errorf("%w: %s", ErrOpenedDuring, path)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK); err != nil {
		return fmt.Errorf("end the write lease on %s: %w", path, err)
	}
	return nil
}

// finish restores atime and mtime from cur, fsyncs and returns the final
// stat.
func finish(fd int, path string, cur events.FileStat) (unix.Stat_t, error) {
	var st unix.Stat_t
	ts := []unix.Timespec{unix.NsecToTimespec(cur.AtimeNS), unix.NsecToTimespec(cur.MtimeNS)}
	if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
		return st, fmt.Errorf("restore times of %s: %w", path, err)
	}
	if err := unix.Fsync(fd); err != nil {
		return st, fmt.Errorf("fsync %s: %w", path, err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return st, fmt.Errorf("stat %s: %w", path, err)
	}
	return st, nil
}

// hasDataIn reports whether any byte that a release of layout l punches
// is backed by a data extent (the head and last block it keeps are not
// looked at).
func hasDataIn(fd int, l stub.Layout) (bool, error) {
	if l.Empty() {
		return false, nil
	}
	d, err := unix.Seek(fd, l.PunchLo, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return d < min(l.PunchHi, l.Size), nil
}

func (r Request) validate() error {
	bad := func(field, why string) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidRequest, field, why)
	}
	switch {
	case !filepath.IsAbs(r.Path) || filepath.Clean(r.Path) != r.Path || strings.ContainsRune(r.Path, 0):
		return bad("path", fmt.Sprintf("%q is not a clean absolute path", r.Path))
	case !isHex(r.FileID, 32):
		return bad("file_id", fmt.Sprintf("%q: want 32 lowercase hex digits", r.FileID))
	case !isHex(r.ObjectID, 64):
		return bad("object_id", fmt.Sprintf("%q: want 64 lowercase hex digits", r.ObjectID))
	case r.Expect.Inode == 0:
		return bad("expect", "missing inode")
	case len(r.Roots) == 0:
		return bad("roots", "none configured")
	}
	return nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// withinRoot returns the root that lexically contains path and path
// relative to it.
func withinRoot(path string, roots []string) (string, string, error) {
	for _, r := range roots {
		if !filepath.IsAbs(r) {
			return "", "", fmt.Errorf("%w: roots: %q is not absolute", ErrInvalidRequest, r)
		}
		r = filepath.Clean(r)
		rel, err := filepath.Rel(r, path)
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		return r, rel, nil
	}
	return "", "", fmt.Errorf("%w: %s (roots %v)", ErrOutsideRoot, path, roots)
}

// openBeneath opens root/rel as an O_PATH fd without following any symlink
// and without leaving root (package beneath), and checks that the fd's
// real path is path.
func openBeneath(root, rel, path string) (int, error) {
	fd, err := beneath.Open(root, filepath.Join(root, rel), unix.O_PATH)
	switch {
	case errors.Is(err, unix.ENOENT):
		return -1, fmt.Errorf("%w: %s no longer exists", ErrChanged, path)
	case errors.Is(err, beneath.ErrOutside):
		return -1, fmt.Errorf("%w: %w", ErrOutsideRoot, err)
	case err != nil:
		return -1, err
	}
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("real path of %s: %w", path, err)
	}
	if real != path {
		unix.Close(fd)
		return -1, fmt.Errorf("%w: %s is really %s", ErrOutsideRoot, path, real)
	}
	return fd, nil
}

// reopen opens the file behind an O_PATH fd for writing; the magic link
// names exactly that inode, so no path can be swapped in between.
func reopen(pfd int, path string) (int, error) {
	proc := "/proc/self/fd/" + strconv.Itoa(pfd)
	flags := unix.O_RDWR | unix.O_CLOEXEC | unix.O_NONBLOCK
	fd, err := unix.Open(proc, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) { // O_NOATIME needs ownership or CAP_FOWNER
		fd, err = unix.Open(proc, flags, 0)
	}
	switch {
	case errors.Is(err, unix.ETXTBSY):
		return -1, fmt.Errorf("%w: %s is being executed", ErrBusy, path)
	case err != nil:
		return -1, fmt.Errorf("open %s for writing: %w", path, err)
	}
	return fd, nil
}

func checkFS(fd int, path string) error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	switch uint32(sfs.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC:
		return nil
	}
	return fmt.Errorf("%w: %s is on a filesystem of type %#x", ErrUnsupportedFS, path, uint32(sfs.Type))
}

func generation(fd int) (uint64, error) {
	g, err := unix.IoctlGetUint32(fd, fsIOCGetVersion)
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) {
		return 0, nil // the filesystem has no generations: 0 everywhere
	}
	return uint64(g), err
}

func fileStat(st *unix.Stat_t) events.FileStat {
	return events.FileStat{
		Size: st.Size, Mode: st.Mode, UID: st.Uid, GID: st.Gid,
		AtimeNS: st.Atim.Nano(), MtimeNS: st.Mtim.Nano(), CtimeNS: st.Ctim.Nano(),
		Dev: st.Dev, Inode: st.Ino,
	}
}

// verifyContent reads the whole file at fd and checks its BLAKE3 against
// objectID.
func verifyContent(ctx context.Context, fd int, objectID string) error {
	h := blake3.New()
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := unix.Pread(fd, buf, off)
		if n > 0 {
			h.Write(buf[:n])
			off += int64(n)
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("read for verification: %w", err)
		}
		if n == 0 && err == nil {
			break
		}
	}
	if got := fmt.Sprintf("%x", h.Sum(nil)); got != objectID {
		return fmt.Errorf("content hash %s differs from object %s", got, objectID)
	}
	return nil
}
