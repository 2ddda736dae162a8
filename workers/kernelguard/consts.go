//go:build linux

package kernelguard

// Kernel constants the guard's programs use, mirrored here for tests and
// Status. The f_mode bits are not in BTF (they are #defines); TestKernelFacts
// checks them on the running kernel.
const (
	fmodeNonotify     = 1 << 25 // FMODE_NONOTIFY (include/linux/fs.h, 6.14+)
	fmodeNonotifyPerm = 1 << 26 // FMODE_NONOTIFY_PERM
	fmodeFsnotifyMask = fmodeNonotify | fmodeNonotifyPerm

	fsOpenPerm  = 0x00010000 // FS_OPEN_PERM (include/linux/fsnotify_backend.h)
	fsPreAccess = 0x00100000 // FS_PRE_ACCESS (6.14+)
)
