//go:build linux

package interceptor

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// xfsHandleReq is struct xfs_fsop_handlereq (linux/xfs_fs.h, 56 bytes on
// 64-bit).
type xfsHandleReq struct {
	fd       uint32
	_        uint32
	path     unsafe.Pointer
	oflags   uint32
	_        uint32
	ihandle  unsafe.Pointer
	ihandlen uint32
	_        uint32
	ohandle  unsafe.Pointer
	ohandlen *uint32
}

// _IOWR('X', nr, struct xfs_fsop_handlereq)
func xfsHandleIoctl(nr uintptr) uintptr {
	return 3<<30 | unsafe.Sizeof(xfsHandleReq{})<<16 | 'X'<<8 | nr
}

var (
	xfsIocFDToHandle   = xfsHandleIoctl(106)
	xfsIocOpenByHandle = xfsHandleIoctl(107)
)

// openNoCmtime opens the XFS file open at fd once more, read-write, through
// XFS_IOC_OPEN_BY_HANDLE, which gives the new file FMODE_NOCMTIME (made for
// hierarchical storage managers): stores through it (page faults of a
// shared mapping, fallocate) leave its mtime and ctime alone. Checked on
// Linux 6.18 (TestFillKeepsMtime). dir is a directory on the same
// filesystem (the ioctl is issued on one). Needs CAP_SYS_ADMIN.
//
// Unlike an event fd, the new fd is an ordinary open of a marked file: the
// open raises FAN_OPEN_PERM (allowed at once in mode pre-access, the only
// mode that uses it), and mmap and fallocate through it raise
// FAN_PRE_ACCESS, which the caller must let through (Interceptor.self).
func openNoCmtime(fd int, dir string) (int, error) {
	if unsafe.Sizeof(xfsHandleReq{}) != 56 {
		return -1, errors.New("xfs handle request: unexpected struct size")
	}
	handle := make([]byte, 64)
	hlen := new(uint32)
	*hlen = uint32(len(handle))
	req := &xfsHandleReq{fd: uint32(fd), ohandle: unsafe.Pointer(&handle[0]), ohandlen: hlen}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), xfsIocFDToHandle, uintptr(unsafe.Pointer(req))); e != 0 {
		return -1, fmt.Errorf("XFS_IOC_FD_TO_HANDLE: %w", e)
	}
	runtime.KeepAlive(req)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	req = &xfsHandleReq{oflags: unix.O_RDWR | unix.O_LARGEFILE, ihandle: unsafe.Pointer(&handle[0]), ihandlen: *hlen}
	nfd, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(dfd), xfsIocOpenByHandle, uintptr(unsafe.Pointer(req)))
	runtime.KeepAlive(req)
	runtime.KeepAlive(handle)
	if e != 0 {
		return -1, fmt.Errorf("XFS_IOC_OPEN_BY_HANDLE: %w", e)
	}
	if _, err := unix.FcntlInt(nfd, unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		unix.Close(int(nfd))
		return -1, fmt.Errorf("cloexec: %w", err)
	}
	var a, b unix.Stat_t
	if err := unix.Fstat(fd, &a); err != nil {
		unix.Close(int(nfd))
		return -1, err
	}
	if err := unix.Fstat(int(nfd), &b); err != nil || a.Dev != b.Dev || a.Ino != b.Ino {
		unix.Close(int(nfd))
		return -1, errors.New("XFS_IOC_OPEN_BY_HANDLE opened another file")
	}
	return int(nfd), nil
}
