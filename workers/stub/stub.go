// Package stub reads and writes the on-disk marks of a managed file:
// Strata's extended attributes in the trusted.strata.* namespace.
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
	"strconv"

	"golang.org/x/sys/unix"
)

// Extended attribute names.
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

// Read returns the xattrs of the file at fd. A file without them gives
// ErrNotManaged.
func Read(fd int) (Info, error) {
	get := func(name string) (string, error) {
		buf := make([]byte, 128)
		n, err := unix.Fgetxattr(fd, name, buf)
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return read(get)
}

// ReadPath is Read for a path, without opening the file (so it raises no
// fanotify event on a stub). Symlinks are not followed.
func ReadPath(path string) (Info, error) {
	get := func(name string) (string, error) {
		buf := make([]byte, 128)
		n, err := unix.Lgetxattr(path, name, buf)
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return read(get)
}

func read(get func(string) (string, error)) (Info, error) {
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

// Write sets every xattr of in on the file at fd and fsyncs it, so the
// marks are durable before the caller frees any block. The state is written
// last: a reader that sees a state sees every other field.
func Write(fd int, in Info) error {
	if in.State != Released && in.State != Archived {
		return fmt.Errorf("stub: invalid state %q", in.State)
	}
	set := []struct{ name, val string }{
		{XattrFileID, in.FileID},
		{XattrObjectID, in.ObjectID},
		{XattrSize, strconv.FormatInt(in.Size, 10)},
		{XattrMtime, strconv.FormatInt(in.MtimeNS, 10)},
		{XattrRelease, in.ReleaseID},
		{XattrState, string(in.State)},
	}
	for _, x := range set {
		if x.val == "" && x.name == XattrRelease {
			continue
		}
		if err := unix.Fsetxattr(fd, x.name, []byte(x.val), 0); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return ErrNoXattr
			}
			return fmt.Errorf("set %s: %w", x.name, err)
		}
	}
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync after setting xattrs: %w", err)
	}
	return nil
}

// SetState changes only the state xattr and fsyncs.
func SetState(fd int, s State) error {
	if err := unix.Fsetxattr(fd, XattrState, []byte(s), 0); err != nil {
		return fmt.Errorf("set %s: %w", XattrState, err)
	}
	return unix.Fsync(fd)
}

// Clear removes every Strata xattr (the file is no longer managed, e.g. it
// was replaced by new content).
func Clear(fd int) error {
	for _, name := range []string{XattrState, XattrFileID, XattrObjectID, XattrSize, XattrMtime, XattrRelease} {
		if err := unix.Fremovexattr(fd, name); err != nil && !errors.Is(err, unix.ENODATA) {
			return fmt.Errorf("remove %s: %w", name, err)
		}
	}
	return unix.Fsync(fd)
}
