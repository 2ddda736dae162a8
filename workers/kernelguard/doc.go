// Package kernelguard loads a pinned BPF program that kills a process
// which asks the kernel where a Strata stub's data is and is about to be
// told "hole", so that it cannot copy the hole as zeros.
//
// Probes of a file's layout — lseek SEEK_DATA/SEEK_HOLE, ioctl FS_IOC_FIEMAP
// and FIBMAP — raise no fanotify event: the daemon never sees them, and a
// stub, whose data is punched out, answers "all hole". GNU cp probes every
// file whose st_blocks is below st_size/512, which a stub always is, and
// copies what it is told is a hole as a hole: zeros, exit status 0.
//
// Guarantees, while the guard is loaded (it stays pinned in bpffs across
// the death of every Strata process, not across a reboot) and for the stubs
// registered with AddStub on ext4 and XFS:
//
//   - a process that is not exempt (Exempt) and asks SEEK_DATA, SEEK_HOLE,
//     FIEMAP or FIBMAP about a range of a registered stub in which the
//     filesystem reports a hole or an unwritten extent before EOF is sent
//     SIGKILL before the call returns to user space: it never acts on the
//     answer; a record of it is pushed to a ring buffer (Records);
//   - nothing else is touched: reads, writes, mmap and every other call on
//     stubs, every call on other files, and probes of ranges already filled;
//   - a file that reuses a registered stub's inode number is not taken for
//     it (the inode generation must match);
//   - with ActionLog the prober is only recorded.
//
// Kernel threads (nfsd, ksmbd answering a remote SEEK) cannot be signalled
// and are only recorded. Programs that take st_blocks == 0 for "all hole"
// without asking (GNU tar --sparse) are not seen at all.
//
// The cost on resident files is one tracepoint dispatch (~50 ns measured
// here) and a compare per mapping the filesystem hands to the iomap
// iterator: nothing on cached reads or ext4 buffered I/O, one per readahead
// batch of XFS uncached reads, per XFS buffered write(2) and per direct
// I/O; see docs/BENCHMARKS-guard.md. Supported says why a kernel cannot run
// the guard; README.md lists what stays uncovered and why.
package kernelguard
