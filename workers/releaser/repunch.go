//go:build linux

package releaser

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/stub"
)

// Punching a partially resident stub again (issue 12 item 4).
//
// A stub read in part keeps the chunks its recall filled (see the
// interceptor's partial.go): it stays a stub, state released, and its
// resident ranges hold the object's verified bytes — unless a program
// wrote into them. Repunch frees them again with no upload (the object's
// copies are still good): under a Hold (every other program's access
// waits) and after a write lease proved no one else has the file open or
// mapped, it checks that the file was not written since its release (size
// and mtime are the xattrs'; fills keep the mtime), then hashes every
// object frame that is wholly resident outside the kept head and tail and
// compares it with the frame's BLAKE3 in the object's manifest. Only if
// every such frame matches does it punch them (whole blocks); a frame that
// differs means a program wrote it, and nothing is punched (ErrChanged).
// Frames only partly resident cannot be hashed and stay as they are.

// ErrNotStub: Repunch was asked about a file whose xattrs do not say
// released.
var ErrNotStub = errors.New("releaser: not a stub")

// RepunchRequest asks for the resident ranges of one stub to be punched.
type RepunchRequest struct {
	Path  string
	Roots []string
	// ResidentHead and ResidentTail: what stays (see Request).
	ResidentHead, ResidentTail int64
	// Manifest returns the object's manifest (its frames' BLAKE3).
	Manifest func(ctx context.Context, objectID string) (object.Manifest, error)
	// Hold makes every other program's access to the file wait until
	// Unhold (the interceptor's Hold); it fails if a recall of the file
	// is in progress. Both required.
	Hold   func(path string) error
	Unhold func(path string)
}

// RepunchResult says what Repunch did.
type RepunchResult struct {
	Freed    int64 `json:"freed"`    // bytes of blocks freed
	Frames   int   `json:"frames"`   // frames verified and punched
	Unproven int64 `json:"unproven"` // resident bytes left in frames only partly resident
}

// Repunch punches the verified resident ranges of the stub at req.Path
// again. See above for the checks.
func Repunch(ctx context.Context, req RepunchRequest) (RepunchResult, error) {
	var res RepunchResult
	if req.Manifest == nil || req.Hold == nil || req.Unhold == nil {
		return res, fmt.Errorf("%w: repunch needs Manifest, Hold and Unhold", ErrInvalidRequest)
	}
	if !filepath.IsAbs(req.Path) || filepath.Clean(req.Path) != req.Path {
		return res, fmt.Errorf("%w: path %q is not a clean absolute path", ErrInvalidRequest, req.Path)
	}
	root, rel, err := withinRoot(req.Path, req.Roots)
	if err != nil {
		return res, err
	}
	pfd, err := openBeneath(root, rel, req.Path)
	if err != nil {
		return res, err
	}
	defer unix.Close(pfd)
	var pst unix.Stat_t
	if err := unix.Fstat(pfd, &pst); err != nil {
		return res, fmt.Errorf("stat %s: %w", req.Path, err)
	}
	if pst.Mode&unix.S_IFMT != unix.S_IFREG {
		return res, fmt.Errorf("%w: %s", ErrNotRegular, req.Path)
	}
	if err := checkFS(pfd, req.Path); err != nil {
		return res, err
	}
	info, err := stub.ReadPath(req.Path)
	if err != nil {
		return res, fmt.Errorf("%w: %s: %w", ErrNotStub, req.Path, err)
	}
	if info.State != stub.Released {
		return res, fmt.Errorf("%w: %s is %s", ErrNotStub, req.Path, info.State)
	}
	// Hold first: the open below is then this process's own, which the
	// interceptor lets through without a recall.
	if err := req.Hold(req.Path); err != nil {
		return res, fmt.Errorf("%w: %s: %w", ErrBusy, req.Path, err)
	}
	defer req.Unhold(req.Path)
	fd, err := reopen(pfd, req.Path)
	if err != nil {
		return res, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return res, fmt.Errorf("stat %s: %w", req.Path, err)
	}
	if st.Dev != pst.Dev || st.Ino != pst.Ino {
		return res, fmt.Errorf("%w: %s was replaced while being opened", ErrChanged, req.Path)
	}
	// No one else may have it open (a mapping writes without events):
	// the lease says so; then it goes, as in Release (our own reads raise
	// events, whose fds would break it), and the Hold keeps others out.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EBUSY) {
			return res, fmt.Errorf("%w: %s", ErrBusy, req.Path)
		}
		return res, fmt.Errorf("take write lease on %s: %w", req.Path, err)
	}
	if err := handOver(fd, req.Path); err != nil {
		return res, err
	}
	now, err := stub.Read(fd)
	if err != nil || now.State != stub.Released || now.FileID != info.FileID || now.ObjectID != info.ObjectID {
		return res, fmt.Errorf("%w: xattrs of %s changed while it was being opened", ErrChanged, req.Path)
	}
	if st.Size != info.Size || st.Mtim.Nano() != info.MtimeNS {
		return res, fmt.Errorf("%w: %s was written since its release (size %d, archived %d; mtime %d, archived %d)",
			ErrChanged, req.Path, st.Size, info.Size, st.Mtim.Nano(), info.MtimeNS)
	}
	l := stub.LayoutOf(st.Size, req.ResidentHead, req.ResidentTail, int64(st.Blksize))
	if l.Empty() {
		return res, nil
	}
	type span struct{ lo, hi int64 }
	var data []span
	if err := dataIn(fd, l.PunchLo, min(l.PunchHi, l.Size), func(a, b int64) { data = append(data, span{a, b}) }); err != nil {
		return res, fmt.Errorf("look for data in %s: %w", req.Path, err)
	}
	if len(data) == 0 {
		return res, nil
	}
	m, err := req.Manifest(ctx, info.ObjectID)
	if err != nil {
		return res, fmt.Errorf("manifest of %s: %w", info.ObjectID, err)
	}
	if m.ObjectID != info.ObjectID || m.Size != info.Size {
		return res, fmt.Errorf("%w: manifest of %s describes %s, %d bytes", ErrChanged, info.ObjectID, m.ObjectID, m.Size)
	}
	covered := func(a, b int64) bool { // [a, b) lies in one data span
		for _, s := range data {
			if s.lo <= a && b <= s.hi {
				return true
			}
		}
		return false
	}
	blk := l.Block
	var punch []span
	buf := make([]byte, 0, 4<<20)
	for _, f := range m.Frames {
		a, b := max(f.Offset, l.PunchLo), min(f.Offset+f.Size, l.PunchHi)
		if a >= b {
			continue
		}
		resident := int64(0)
		for _, s := range data {
			resident += max(0, min(s.hi, b)-max(s.lo, a))
		}
		if resident == 0 {
			continue
		}
		if !covered(f.Offset, f.Offset+f.Size) {
			res.Unproven += resident
			continue
		}
		if err := ctx.Err(); err != nil {
			return RepunchResult{}, err
		}
		if int64(cap(buf)) < f.Size {
			buf = make([]byte, f.Size)
		}
		b3 := buf[:f.Size]
		if err := preadFull(fd, b3, f.Offset); err != nil {
			return RepunchResult{}, fmt.Errorf("read %s at %d: %w", req.Path, f.Offset, err)
		}
		sum := blake3.Sum256(b3)
		if hex.EncodeToString(sum[:]) != f.BLAKE3 {
			return RepunchResult{}, fmt.Errorf("%w: %s: resident bytes %d-%d differ from the object (written since its release)",
				ErrChanged, req.Path, f.Offset, f.Offset+f.Size)
		}
		// Whole blocks of the frame only; the frame that ends at EOF
		// takes the partial last block too when nothing is kept there.
		pa, pb := (a+blk-1)/blk*blk, b/blk*blk
		if f.Offset+f.Size == l.Size && l.PunchHi >= l.Size {
			pb = l.PunchHi
		}
		if pa < pb {
			punch = append(punch, span{pa, pb})
			res.Frames++
		}
	}
	if len(punch) == 0 {
		return res, nil
	}
	before := st.Blocks
	for _, p := range punch {
		if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, p.lo, p.hi-p.lo); err != nil {
			return res, fmt.Errorf("punch %s %d-%d: %w", req.Path, p.lo, p.hi, err)
		}
	}
	if err := unix.Fsync(fd); err != nil {
		return res, fmt.Errorf("fsync %s after punch: %w", req.Path, err)
	}
	after, err := finish(fd, req.Path, fileStat(&st)) // the punch moved mtime: put it back
	if err != nil {
		return res, err
	}
	res.Freed = (before - after.Blocks) * 512
	return res, nil
}

// dataIn calls fn for each data segment of the file within [s, e).
func dataIn(fd int, s, e int64, fn func(a, b int64)) error {
	for pos := s; pos < e; {
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
			return fmt.Errorf("short read at %d", off)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// RepunchVerb is the control verb "repunch" (strata release): punch again
// the resident ranges of every partially resident stub under Paths
// (directories recursively).
const RepunchVerb = "repunch"

// RepunchVerbRequest is the request of RepunchVerb.
type RepunchVerbRequest struct {
	Paths []string `json:"paths"`
}

// RepunchedFile is one stub in the reply of RepunchVerb.
type RepunchedFile struct {
	Path string `json:"path"`
	RepunchResult
	// Skipped says why nothing was punched ("" when it was, or when
	// nothing was resident).
	Skipped string `json:"skipped,omitempty"`
}

// RepunchReply answers RepunchVerbRequest.
type RepunchReply struct {
	Files []RepunchedFile `json:"files"`
	Freed int64           `json:"freed"`
}

// Repuncher serves RepunchVerb.
type Repuncher struct {
	Roots                      []string
	ResidentHead, ResidentTail int64
	Manifest                   func(ctx context.Context, objectID string) (object.Manifest, error)
	Hold                       func(path string) error
	Unhold                     func(path string)
	Logger                     *slog.Logger
}

// Handlers returns the control verbs of p.
func (p *Repuncher) Handlers() map[string]pipeline.ControlHandler {
	return map[string]pipeline.ControlHandler{RepunchVerb: p.handle}
}

func (p *Repuncher) handle(ctx context.Context, b []byte) (any, error) {
	var req RepunchVerbRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("%s: %w", RepunchVerb, err)
	}
	if len(req.Paths) == 0 {
		return nil, fmt.Errorf("%s: no path given", RepunchVerb)
	}
	for _, path := range req.Paths {
		// A hot tree itself is a directory to walk like any other (a
		// single release refuses it: it is no file).
		if isRoot(path, p.Roots) {
			continue
		}
		if _, _, err := withinRoot(path, p.Roots); err != nil {
			return nil, fmt.Errorf("%s: %w", RepunchVerb, err)
		}
	}
	rep := RepunchReply{Files: []RepunchedFile{}}
	for _, root := range req.Paths {
		err := filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !de.Type().IsRegular() {
				return nil
			}
			if info, err := stub.ReadPath(path); err != nil || info.State != stub.Released {
				return nil // not a stub: nothing to punch again
			}
			res, err := Repunch(ctx, RepunchRequest{Path: path, Roots: p.Roots, ResidentHead: p.ResidentHead, ResidentTail: p.ResidentTail,
				Manifest: p.Manifest, Hold: p.Hold, Unhold: p.Unhold})
			f := RepunchedFile{Path: path, RepunchResult: res}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				f.Skipped = err.Error()
				p.Logger.Info("resident ranges of a stub not punched", "path", path, "err", err)
			} else if res.Freed > 0 {
				p.Logger.Info("punched the resident ranges of a stub again", "path", path, "freed", res.Freed, "frames", res.Frames)
			}
			rep.Freed += f.Freed
			rep.Files = append(rep.Files, f)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", RepunchVerb, err)
		}
	}
	return rep, nil
}

// isRoot reports whether path is one of roots (absolute ones only).
func isRoot(path string, roots []string) bool {
	for _, r := range roots {
		if filepath.IsAbs(r) && filepath.IsAbs(path) && filepath.Clean(r) == filepath.Clean(path) {
			return true
		}
	}
	return false
}
