//go:build linux

// Package beneath opens paths inside a hot tree without ever leaving it.
// The daemon runs as root and is told about files by path — by a scan, by
// an event, by `strata archive PATH` — while anyone who can write into a
// hot tree can turn a directory of it into a symlink to /etc at any
// moment. Every open of such a path goes through Open: openat2 from the
// tree's root with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS,
// so the kernel refuses a symlink, a ".." or a magic link anywhere on the
// way, atomically (no check-then-open race).
package beneath

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrOutside: the path is not inside the tree, or resolving it needs a
// symlink or leaves the tree.
var ErrOutside = errors.New("beneath: path leaves its hot tree")

// Resolve is the resolution every Open uses.
const Resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// Rel returns path relative to root ("." for root itself), or ErrOutside
// if path is not root or lexically below it. Both must be absolute.
func Rel(root, path string) (string, error) {
	if !filepath.IsAbs(root) || !filepath.IsAbs(path) {
		return "", fmt.Errorf("%w: %s (root %s): want absolute paths", ErrOutside, path, root)
	}
	rel, err := filepath.Rel(filepath.Clean(root), filepath.Clean(path))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%w: %s is not inside %s", ErrOutside, path, root)
	}
	return rel, nil
}

// Open opens path, which must lie inside the tree whose root is root, with
// flags (O_CLOEXEC is added), following no symlink and never leaving root.
// The last component is never followed either (a symlink there is refused
// too). A path that escapes is ErrOutside; other errors wrap the errno
// (ENOENT for a file that is gone).
func Open(root, path string, flags int) (int, error) {
	rel, err := Rel(root, path)
	if err != nil {
		return -1, err
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open hot tree %s: %w", root, err)
	}
	defer unix.Close(rfd)
	return OpenAt(rfd, root, rel, flags)
}

// OpenAt is Open relative to an fd of the root (rootPath names it in
// errors): for callers that open many paths of one tree.
func OpenAt(rootFD int, rootPath, rel string, flags int) (int, error) {
	for {
		fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: Resolve})
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
			continue // RESOLVE_* may ask to retry when a rename raced
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
			return -1, fmt.Errorf("%w: %s resolves through a symlink or outside %s: %w", ErrOutside, filepath.Join(rootPath, rel), rootPath, err)
		default:
			return -1, fmt.Errorf("open %s: %w", filepath.Join(rootPath, rel), err)
		}
	}
}
