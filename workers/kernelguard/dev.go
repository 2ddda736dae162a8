//go:build linux

package kernelguard

import "golang.org/x/sys/unix"

// kernelDev converts a user-space dev_t (as in stat) to the kernel's
// internal encoding (super_block.s_dev: major<<20 | minor).
func kernelDev(dev uint64) uint32 {
	return unix.Major(dev)<<20 | unix.Minor(dev)
}

// userDev converts the kernel's internal dev_t encoding to a user-space
// dev_t comparable with stat's st_dev.
func userDev(kdev uint32) uint64 {
	return unix.Mkdev(kdev>>20, kdev&0xfffff)
}
