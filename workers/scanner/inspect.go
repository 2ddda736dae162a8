package scanner

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stub"
)

// Errors of Inspect.
var (
	ErrNotRegular = errors.New("scanner: not a regular file")
	ErrReleased   = errors.New("scanner: already released (a stub)")
)

// Inspect builds the candidate for one file as Scan would, whatever the
// policy says: for `strata archive PATH`, which archives regardless of
// age. root is the hot tree the file belongs to. Symlinks are not
// followed; a stub is never opened.
func Inspect(path, root, reason string) (Candidate, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, ErrNotRegular)
	}
	info, err := stub.ReadPath(path)
	managed := err == nil
	switch {
	case managed && info.State == stub.Released:
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, ErrReleased)
	case err != nil && !errors.Is(err, stub.ErrNotManaged) && !errors.Is(err, stub.ErrNoXattr):
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	dirfd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Candidate{}, fmt.Errorf("inspect %s: %w", path, err)
	}
	defer unix.Close(dirfd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(dirfd, &sfs); err != nil {
		return Candidate{}, fmt.Errorf("inspect %s: statfs: %w", path, err)
	}
	var fsid [8]byte
	binary.LittleEndian.PutUint32(fsid[0:], uint32(sfs.Fsid.Val[0]))
	binary.LittleEndian.PutUint32(fsid[4:], uint32(sfs.Fsid.Val[1]))
	return candidateAt(dirfd, filepath.Base(path), path, root, fsid, &st, info, managed, reason)
}
