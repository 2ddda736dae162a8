package scanner

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// XattrOwner, on the root directory of a hot tree, names the daemon that
// manages it: its data directory and pid (informative: the claim itself
// is the flock).
const XattrOwner = "trusted.strata.owner"

// ErrClaimed: another daemon manages the hot tree.
var ErrClaimed = errors.New("scanner: hot tree managed by another strata daemon")

// Claim makes the hot trees roots this daemon's (whose data directory is
// dataDir): an exclusive flock on each root directory, held until release
// is called or the process ends, however it ends. A tree another daemon
// holds — whatever its data directory — is refused with an error that
// names it: two daemons on one tree would mark, recall and release each
// other's stubs.
func Claim(roots []string, dataDir string) (release func(), err error) {
	var fds []int
	release = func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
		fds = nil
	}
	for _, r := range roots {
		fd, err := unix.Open(r, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			release()
			return nil, fmt.Errorf("claim hot tree %s: %w", r, err)
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			owner := "unknown"
			buf := make([]byte, 512)
			if n, gerr := unix.Fgetxattr(fd, XattrOwner, buf); gerr == nil {
				owner = string(buf[:n])
			}
			unix.Close(fd)
			release()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w: %s is managed by the daemon with %s; stop it, or remove the tree from one of the two configurations", ErrClaimed, r, owner)
			}
			return nil, fmt.Errorf("claim hot tree %s: %w", r, err)
		}
		fds = append(fds, fd)
		me := fmt.Sprintf("data directory %s (pid %d)", dataDir, os.Getpid())
		if err := unix.Fsetxattr(fd, XattrOwner, []byte(me), 0); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			release()
			return nil, fmt.Errorf("claim hot tree %s: mark its owner: %w", r, err)
		}
	}
	return release, nil
}
