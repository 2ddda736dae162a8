// Package interceptor holds programs that touch a stub until the stub's bytes
// are back, through a fanotify group of class FAN_CLASS_PRE_CONTENT.
//
// # Marks
//
// Only stubs carry a mark: an inode mark (never a mount or filesystem mark),
// so resident files stay off the kernel's hooked path and pay nothing. In
// mode pre-access (Linux ≥ 6.14, ext4/XFS/btrfs) the mark is FAN_PRE_ACCESS:
// the kernel reports the byte range of every read, write, truncate, splice
// and mmap before it happens. In mode open-perm (older kernels, or forced) the
// mark is FAN_OPEN_PERM and the whole file is recalled at open. A fully
// recalled file gets state archived and loses its mark, so it raises no more
// events.
//
// # Range-first recall
//
// A stub is cut into fill chunks (ChunkSize, 4 MiB by default, aligned). An
// event for bytes [off, off+n) claims every chunk the range touches, asks the
// Source for their verified bytes, stores them through a shared mapping of a
// dup of the event's fd (which raises no event; see fillRange for why not
// pwrite) and only then answers FAN_ALLOW. When the range covers only part
// of a chunk, the whole chunk is verified, the pages the program waits for
// are stored first and the program is let go; the rest of the chunk is
// stored right after. Background fills then fetch the chunks of the next
// Config.ReadAhead bytes after the access, and the remaining chunks of the
// file only when the stub is smaller than Config.FillWholeBelow or its
// accesses look sequential (Config.SequentialAfter): otherwise the stub
// stays partially resident (partial.go), and an access that touches only
// resident bytes (a head the release kept, chunks filled earlier) is
// allowed with no recall. Background fills run up to
// BackgroundFills at once across all stubs (one at a time per stub on XFS,
// where concurrent stores into one file were measured slower). Fills keep
// the file's mtime: a recall is not a modification. On XFS they store
// through a second fd opened by XFS_IOC_OPEN_BY_HANDLE, which carries
// FMODE_NOCMTIME, so no stat ever sees the mtime move; ext4 has no such
// fd, the kernel stamps the mtime at every store and the fill puts it back
// right after (a stat in between sees the stamp: README.md), and programs
// that give up when it moves (Config.MtimeCheckPrograms: rclone) get such
// stubs recalled whole at open. Per stub (keyed by device and inode) the
// interceptor keeps each chunk's state — empty, filling, filled — so a
// repeated event for filled bytes is answered at once, and concurrent
// events on one chunk wait for the one fill in flight: one recall per stub.
//
// Safety rules, each enforced here:
//
//   - Bytes written are only those the Source returned without error; the
//     Source promises they are verified against the object's hashes.
//   - A failed fill answers FAN_DENY with EIO, or ENOSPC/EDQUOT when the
//     local store failed for lack of space (a store through the mapping
//     faults with SIGBUS and no errno; fallocate of its block says which):
//     the program gets an error, never zeros. A fill that fails leaves
//     holes, never data: what it stored (pages faulted in writable, half
//     copied) is punched back before the failure is reported, and a chunk
//     counts as filled only once every hole of it was stored whole. Each
//     segment being stored is journaled, so that a daemon killed mid-store
//     leaves the next one the segment to punch. The next access retries.
//   - Fills never go past the archived size, nor past a size the file was
//     truncated to, and only write into holes (SEEK_DATA/SEEK_HOLE): a range
//     that holds data — filled by an earlier daemon, or written by the user
//     after it was filled — is never overwritten.
//   - An event with count 0 at x is a truncate to x or a clone of the file
//     from x to its end (FICLONE; cp tries it first on XFS): the kernel
//     reports both alike. Bytes from x on are filled first (the clone reads
//     them), then the fill limit is lowered to x and fills in flight are
//     waited for before the event is allowed, so no fill can extend the
//     file after it shrank. A truncate by O_TRUNC raises no event and needs
//     no recall at all. The bytes below x are filled in the background like
//     any others: nothing is lost, since they can only be read or written
//     through events that wait for them.
//   - SEEK_DATA/SEEK_HOLE raise no event: a program that probes for data
//     before reading (cp, tar -S) sees a stub as one hole. Stubs smaller
//     than Config.WholeFileBelow, and stubs opened by a program named in
//     Config.WholeFilePrograms, are recalled whole before open returns.
//   - mmap and exec raise one event for the whole mapped range: it is filled
//     before ALLOW, like any range. Writes raise the same event as reads.
//
// When every chunk below the limit is filled, the content is fdatasynced
// and proven: the whole file is read back through the recall's fd (no
// event) and its size and BLAKE3 must be the object's. Only then the
// stub's state becomes archived, its mark is removed and Config.OnComplete
// is called. Chunks that differ and that no program can have written are
// filled again (finish); chunks a program wrote make the completion a
// modification (Completion.Modified, file.modified).
//
// # When the daemon is gone
//
// Marks live only as long as the group's last fd. If the process holding it
// dies, the kernel allows every pending event and drops every mark: blocked
// readers are released and stubs read as holes — zeros, with no error. With
// Config.HolderSocket a holder process (HolderMain) keeps a dup of the
// group fd, so marks and held programs survive a crash or a stop of the
// daemon; once no daemon has taken the group back within HolderGrace, the
// holder denies every access to a stub with EIO; with
// Config.JournalDir every event and every chunk store in flight is
// journaled, so a restarted daemon answers the events its predecessor had
// read (after filling their ranges) and re-fills chunks it left half
// written. See recover.go for what the kernel allows, and README.md for
// what is covered and what remains (holder and daemon both dead: zeros).
//
// # Recall rules
//
// Config.Rules say per program (executable, process name, uid, cgroup)
// what an access to a stub does: recall, deny (EPERM, nothing recalled),
// throttle (recalls per minute, bytes per second from the Source) or
// head-only (resident bytes only). A process that starts many recalls in a
// short time is a storm, published as recall.storm. They are evaluated
// only for events, so only for stubs; see rules.go.
package interceptor
