// Package kernelguard loads a pinned BPF guard that makes the kernel fail
// closed on Strata stubs, so that a program reading a stub gets the
// original bytes or an error, never zeros.
//
// A stub is a regular file carrying the xattr security.bpf.strata
// (SetMarker). While the guard is loaded, and for as long as it stays
// pinned in bpffs (it outlives every Strata process, not a reboot):
//
//   - opening a stub that no live fanotify FAN_PRE_ACCESS or FAN_OPEN_PERM
//     mark guards fails with Config.Errno (EIO), unless the opener is an
//     exempt Strata process (Guard.Exempt);
//   - a read, write, mmap or truncate of a stub whose mark died after it
//     was opened fails the same way;
//   - extent-map ioctls (FIEMAP, FIBMAP, XFS GETBMAP*, EXT4 GET_ES_CACHE)
//     on a stub fail with EOPNOTSUPP, guarded or not, so tools fall back to
//     reading;
//   - a process that probes a stub with lseek SEEK_DATA/SEEK_HOLE is killed
//     (SIGKILL before the lseek returns), since lseek has no LSM hook and
//     the answer cannot be corrected;
//   - a reader whose held event a dying fanotify group allowed is killed
//     before its read returns;
//   - only exempt processes may set or remove the marker.
//
// Resident files pay one f_mode test per read and write, and a block-count
// test per open. The guard needs BPF trampolines (BPF LSM, fentry, fexit):
// Supported says why a kernel cannot run it. See README.md for the exact
// errnos, what cannot be covered without kernel changes, and the kernels it
// was verified on.
package kernelguard
