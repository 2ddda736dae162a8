// Package stub reads and writes the on-disk marks of a managed file:
// one binary record in the trusted.strata xattr (record.go); files
// marked in the first format (trusted.strata.* xattrs) are still read.
//
// A file with State Released is a stub: same path, inode, size, mode, owner
// and times as before, no data blocks; its content is the object ObjectID
// (BLAKE3-256 of the content). A file with State Archived is resident and
// its content still equals ObjectID (archived-clean). The state is written
// before the hole is punched, so a crash can never leave unmarked zeros.
package stub

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Xattr is the one extended attribute of a managed file: a compact binary
// record (see encode) small enough to live inside the inode on ext4 with
// 256-byte inodes and on XFS, so that a released small file costs no
// block. Its layout is in docs/DESIGN.md ("The stub's record").
const Xattr = "trusted.strata"

// The names of the first format, one xattr per field (decimal text). Read
// still understands them; Write replaces them with Xattr.
const (
	XattrFileID   = "trusted.strata.file_id"
	XattrObjectID = "trusted.strata.object_id"
	XattrState    = "trusted.strata.state"
	XattrSize     = "trusted.strata.size"
	XattrMtime    = "trusted.strata.mtime_ns"
	// XattrRelease names one release of the file (optional: stubs
	// released before it existed have none). A recall's events carry it
	// in their message ids, so each recall is recorded once however often
	// its events are published, and the next release's recall is another.
	XattrRelease = "trusted.strata.release"
)

var legacyXattrs = []string{XattrState, XattrFileID, XattrObjectID, XattrSize, XattrMtime, XattrRelease}

// State of a managed file.
type State string

// States.
const (
	Released State = "released" // content only in cold copies; blocks freed
	Archived State = "archived" // resident, and equal to its object
)

// Errors.
var (
	ErrNotManaged = errors.New("stub: file has no strata xattrs")
	ErrNoXattr    = errors.New("stub: filesystem does not support trusted xattrs")
)

// Info is what the xattrs of a managed file say.
type Info struct {
	FileID   string
	ObjectID string
	State    State
	Size     int64 // size of the archived content
	MtimeNS  int64 // mtime of the archived content
	// ReleaseID names the release that made the file a stub ("" if
	// unknown); see XattrRelease.
	ReleaseID string
}

// Unchanged reports whether a file of size bytes and mtime mtimeNS still
// looks like the archived content in describes. Releasing and recalling
// keep both; a write moves at least the mtime (a write that put it back,
// or a write through a mapping never unmapped, is not seen here).
func (in Info) Unchanged(size, mtimeNS int64) bool {
	return size == in.Size && mtimeNS == in.MtimeNS
}

// Read returns the record of the file at fd. A file without one gives
// ErrNotManaged.
func Read(fd int) (Info, error) {
	return read(func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) })
}

// ReadPath is Read for a path, without opening the file (so it raises no
// fanotify event on a stub). Symlinks are not followed.
func ReadPath(path string) (Info, error) {
	return read(func(name string, buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) })
}

func read(getx func(name string, buf []byte) (int, error)) (Info, error) {
	var buf [recordMax]byte
	n, err := getx(Xattr, buf[:])
	switch {
	case err == nil:
		return decode(buf[:n])
	case errors.Is(err, unix.EOPNOTSUPP):
		return Info{}, ErrNoXattr
	case errors.Is(err, unix.ERANGE):
		return Info{}, fmt.Errorf("%s: record longer than %d bytes: not one Strata wrote", Xattr, recordMax)
	case !errors.Is(err, unix.ENODATA):
		return Info{}, fmt.Errorf("read %s: %w", Xattr, err)
	}
	return readLegacy(func(name string) (string, error) {
		b := make([]byte, 128)
		n, err := getx(name, b)
		if err != nil {
			return "", err
		}
		return string(b[:n]), nil
	})
}

// readLegacy reads the first format's xattrs.
func readLegacy(get func(string) (string, error)) (Info, error) {
	var in Info
	var err error
	if in.FileID, err = get(XattrFileID); err != nil {
		if errors.Is(err, unix.ENODATA) {
			return Info{}, ErrNotManaged
		}
		if errors.Is(err, unix.EOPNOTSUPP) {
			return Info{}, ErrNoXattr
		}
		return Info{}, fmt.Errorf("read %s: %w", XattrFileID, err)
	}
	if in.ObjectID, err = get(XattrObjectID); err != nil {
		return Info{}, fmt.Errorf("read %s: %w", XattrObjectID, err)
	}
	s, err := get(XattrState)
	if err != nil {
		return Info{}, fmt.Errorf("read %s: %w", XattrState, err)
	}
	in.State = State(s)
	if in.State != Released && in.State != Archived {
		return Info{}, fmt.Errorf("%s: unknown state %q", XattrState, s)
	}
	if s, err = get(XattrSize); err != nil {
		return Info{}, fmt.Errorf("read %s: %w", XattrSize, err)
	}
	if in.Size, err = strconv.ParseInt(s, 10, 64); err != nil || in.Size < 0 {
		return Info{}, fmt.Errorf("%s: bad value %q", XattrSize, s)
	}
	if s, err = get(XattrMtime); err != nil {
		return Info{}, fmt.Errorf("read %s: %w", XattrMtime, err)
	}
	if in.MtimeNS, err = strconv.ParseInt(s, 10, 64); err != nil {
		return Info{}, fmt.Errorf("%s: bad value %q", XattrMtime, s)
	}
	switch s, err = get(XattrRelease); {
	case err == nil:
		in.ReleaseID = s
	case !errors.Is(err, unix.ENODATA):
		return Info{}, fmt.Errorf("read %s: %w", XattrRelease, err)
	}
	return in, nil
}

// Write sets the record of in on the file at fd and fsyncs it, so the
// mark is durable before the caller frees any block. One xattr, set in
// one call: a reader sees all of it or none. The first format's xattrs, if
// the file has them, are removed after it.
func Write(fd int, in Info) error {
	rec, err := encode(in)
	if err != nil {
		return err
	}
	if err := unix.Fsetxattr(fd, Xattr, rec, 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return ErrNoXattr
		}
		return fmt.Errorf("set %s: %w", Xattr, err)
	}
	if err := removeLegacy(fd); err != nil {
		return err
	}
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync after setting xattrs: %w", err)
	}
	return nil
}

// SetState changes only the state of the record and fsyncs.
func SetState(fd int, s State) error {
	in, err := Read(fd)
	if err != nil {
		return err
	}
	in.State = s
	return Write(fd, in)
}

// Clear removes every Strata xattr (the file is no longer managed, e.g. it
// was replaced by new content).
func Clear(fd int) error {
	if err := unix.Fremovexattr(fd, Xattr); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove %s: %w", Xattr, err)
	}
	if err := removeLegacy(fd); err != nil {
		return err
	}
	return unix.Fsync(fd)
}

// removeLegacy removes the first format's xattrs where the file has any
// (one listxattr when it has none).
func removeLegacy(fd int) error {
	var buf [1024]byte
	n, err := unix.Flistxattr(fd, buf[:])
	if errors.Is(err, unix.ERANGE) {
		n, err = 0, nil // more names than Strata ever sets: remove each
		for _, name := range legacyXattrs {
			if err := unix.Fremovexattr(fd, name); err != nil && !errors.Is(err, unix.ENODATA) {
				return fmt.Errorf("remove %s: %w", name, err)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if slices.Contains(legacyXattrs, name) {
			if err := unix.Fremovexattr(fd, name); err != nil && !errors.Is(err, unix.ENODATA) {
				return fmt.Errorf("remove %s: %w", name, err)
			}
		}
	}
	return nil
}
