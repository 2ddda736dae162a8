// Package modwatch reports a write into an archived file when it happens:
// it publishes file.modified at the write, from a fanotify notification,
// instead of waiting for the next scan to find a size or mtime that moved.
//
// # What is watched, and what it costs
//
// Only files whose content Strata holds as an object are watched: stubs
// (catalog state released) and clean recalled files (state archived), each
// with an inode mark of FAN_MODIFY|FAN_CLOSE_WRITE in a group of class
// FAN_CLASS_NOTIF, a group of its own. Never a mount or filesystem mark:
// those would queue an event for every write of every file of the
// filesystem. Never a permission event: the writer never waits for Strata,
// which stays out of every resident file's data path; a file that is not
// archived carries no mark at all and its writes cost what they cost
// without Strata.
//
// A marked file raises one event at its first write (FAN_MODIFY, queued
// after the write returns; later writes merge into it while it is queued),
// the watcher publishes file.modified and removes the mark: from then on
// the file is dirty, an ordinary hot file again, and its writes raise
// nothing. It is marked again when it becomes a stub or a clean recalled
// file again (file.released, recall.completed in the log). So each archived
// file costs Strata at most one event per archive cycle.
//
// Memory: an inode mark is ~104 bytes of kernel slab and pins its inode
// (~1.4 KB with its dentry, FIELDNOTES). A stub is pinned already by the
// interceptor's mark, so watching it adds the 104 bytes; a clean recalled
// file is pinned by this mark alone until it is written, released again
// or deleted. The watcher itself keeps a map entry per watched file (its
// inode and file id, ~50 bytes; the rest is read from each event's fd).
//
// FAN_CLOSE_WRITE catches what FAN_MODIFY cannot see: a write through a
// shared mapping raises no FAN_MODIFY, but it moves the mtime, and the
// writer's close (of any fd open for writing) raises FAN_CLOSE_WRITE; the
// file is reported modified then only if its size or mtime no longer match
// its xattrs (a program that opened it for writing and wrote nothing is
// not a modification).
//
// Events of the daemon's own process are not modifications: its fills,
// its punches and the times it puts back are all Strata's (the kernel
// names the process that caused each event).
//
// # Which files, when
//
// At start the watcher marks every file the catalog holds as released or
// archived, and then follows the log from the catalog's sequence at that
// moment: file.released and recall.completed mark the file, file.moved
// marks it at its new path, file.modified (from the interceptor, the
// reconciler or itself) removes the mark. A file is marked only when its
// xattrs still name the event's file id, and right after the mark its size
// and mtime are compared with the archived ones: a write that came before
// the mark is reported then, so no write falls between archiving and
// watching.
//
// # What remains to the scan
//
// Marks live as long as the watcher's group: writes while the daemon is
// stopped, and writes through a mapping whose fd is never closed, are
// found by the reconciler at the next scan (workers/scanner), which builds
// the same event with the same id (stub.Modified), so an observation
// reported twice is recorded once. A queue overflow (FAN_Q_OVERFLOW; the
// queue holds fs.fanotify.max_queued_events, 16384 by default) makes the
// watcher walk the catalog again in the background, marking and comparing
// every archived file with its xattrs: writes whose events were lost are
// reported if they moved size or mtime (untested: an overflow cannot be
// forced here without lowering that limit for every fanotify user of the
// machine).
package modwatch
