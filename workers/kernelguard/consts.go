//go:build linux

package kernelguard

import "unsafe"

// ioctl numbers x/sys/unix lacks, in the generic encoding (x86, arm, arm64,
// riscv): dir<<30 | size<<16 | type<<8 | nr.
const (
	// FS_IOC_GETVERSION = _IOR('v', 1, long): the inode generation (an int).
	fsIocGetversion = 2<<30 | uint(unsafe.Sizeof(uintptr(0)))<<16 | 'v'<<8 | 1
	// FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap), struct fiemap is 32 bytes.
	fsIocFiemap = 3<<30 | 32<<16 | 'f'<<8 | 11
)

// Kernel constants the guard's program uses (#defines, not in BTF),
// mirrored here for the tests, which check them on the running kernel.
const (
	iomapWrite  = 1 << 0     // IOMAP_WRITE (include/linux/iomap.h)
	iomapReport = 1 << 2     // IOMAP_REPORT
	iomapDirect = 1 << 4     // IOMAP_DIRECT
	iomapHole   = 0          // IOMAP_HOLE, a mapping type
	iomapMapped = 2          // IOMAP_MAPPED
	fsPreAccess = 0x00100000 // FS_PRE_ACCESS (include/linux/fsnotify_backend.h, 6.14+)
)
