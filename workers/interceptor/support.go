//go:build linux

package interceptor

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KernelHasPreAccess reports whether the running kernel has FAN_PRE_ACCESS
// (Linux ≥ 6.14) and names the kernel release.
func KernelHasPreAccess() (bool, string) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false, "unknown"
	}
	rel := unix.ByteSliceToString(u.Release[:])
	major, minor, ok := parseRelease(rel)
	return ok && (major > 6 || major == 6 && minor >= 14), rel
}

func parseRelease(rel string) (major, minor int, ok bool) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	minorStr := parts[1]
	if i := strings.IndexFunc(minorStr, func(c rune) bool { return c < '0' || c > '9' }); i >= 0 {
		minorStr = minorStr[:i]
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(minorStr)
	return major, minor, err1 == nil && err2 == nil
}

// Supported reports whether stubs under dir can carry pre-content marks,
// with the reason when they cannot. It tries a FAN_PRE_ACCESS mark on dir
// in a throwaway group: it opens no file and raises no event.
func Supported(dir string) (bool, string) {
	ok, rel := KernelHasPreAccess()
	if !ok {
		return false, fmt.Sprintf("kernel %s has no FAN_PRE_ACCESS (needs Linux >= 6.14); open-perm mode recalls whole files at open", rel)
	}
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_PRE_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		return false, fmt.Sprintf("fanotify_init: %v (needs CAP_SYS_ADMIN and CONFIG_FANOTIFY_ACCESS_PERMISSIONS)", err)
	}
	defer unix.Close(fd)
	var sfs unix.Statfs_t
	fsName := "unknown filesystem"
	if unix.Statfs(dir, &sfs) == nil {
		fsName = fsTypeName(sfs.Type)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_PRE_ACCESS, unix.AT_FDCWD, dir); err != nil {
		if err == unix.EINVAL || err == unix.EOPNOTSUPP {
			return false, fmt.Sprintf("%s does not allow pre-content marks (only ext4, XFS and btrfs do)", fsName)
		}
		return false, fmt.Sprintf("fanotify_mark %s: %v", dir, err)
	}
	return true, fmt.Sprintf("%s on kernel %s supports pre-content marks", fsName, rel)
}

func fsTypeName(t int64) string {
	switch t {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("filesystem 0x%x", t)
}
