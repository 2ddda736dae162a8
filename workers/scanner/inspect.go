package scanner

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/beneath"
	"github.com/strata-hsm/strata/workers/stub"
)

// Errors of Inspect.
var (
	ErrNotRegular = errors.New("scanner: not a regular file")
	ErrReleased   = errors.New("scanner: already released (a stub)")
)

// Inspect builds the candidate for one file as Scan would, whatever the
// policy says: for `strata archive PATH`, which archives regardless of
// age. root is the hot tree the file belongs to: its directory is opened
// beneath root (package beneath), so a path through a symlink out of the
// tree is refused; no symlink is followed; a stub is never opened.
func Inspect(path, root, reason string) (Candidate, error) {
	dirfd, err := beneath.Open(root, filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	defer unix.Close(dirfd)
	name := filepath.Base(path)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, ErrNotRegular)
	}
	// The xattrs through the directory's fd (a magic link this process
	// resolves): the name beneath the directory just opened, never another.
	info, err := stub.ReadPath(fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name))
	managed := err == nil
	switch {
	case managed && info.State == stub.Released:
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, ErrReleased)
	case err != nil && !errors.Is(err, stub.ErrNotManaged) && !errors.Is(err, stub.ErrNoXattr):
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(dirfd, &sfs); err != nil {
		return Candidate{}, fmt.Errorf("inspect %s: statfs: %w", path, err)
	}
	var fsid [8]byte
	binary.LittleEndian.PutUint32(fsid[0:], uint32(sfs.Fsid.Val[0]))
	binary.LittleEndian.PutUint32(fsid[4:], uint32(sfs.Fsid.Val[1]))
	return candidateAt(dirfd, filepath.Base(path), path, root, fsid, &st, info, managed, reason)
}
