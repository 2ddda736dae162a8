// Package eventstest provides valid sample events of every kind for tests.
//
// Only tests import this package.
package eventstest

import (
	"fmt"
	"time"

	"github.com/strata-hsm/strata/events"
)

// FileID returns a valid file id derived from n.
func FileID(n int) string { return fmt.Sprintf("%032x", n) }

// ObjectID returns a valid object id derived from n.
func ObjectID(n int) string { return fmt.Sprintf("%064x", n) }

// Stat returns a plausible FileStat for a file of size bytes.
func Stat(size int64) events.FileStat {
	return events.FileStat{
		Size: size, Mode: 0o100644, UID: 1000, GID: 1000,
		AtimeNS: 1_700_000_000_000_000_000, MtimeNS: 1_700_000_000_000_000_000,
		CtimeNS: 1_700_000_000_000_000_000, Dev: 2049, Inode: 12, Generation: 7,
	}
}

// Sample returns a valid payload of kind k, or nil if k is unknown.
func Sample(k events.Kind) events.Event {
	fid, oid, path := FileID(1), ObjectID(2), "/hot/a/b.dat"
	switch k {
	case events.KindFileSelected:
		return &events.FileSelected{FileID: fid, Path: path, Root: "/hot", Stat: Stat(1 << 20), Reason: events.ReasonPolicy}
	case events.KindObjectPacked:
		return &events.ObjectPacked{FileID: fid, Path: path, ObjectID: oid, Stat: Stat(1 << 20), Size: 1 << 20,
			PackedSize: 1234, PackedSum: ObjectID(3), FrameSize: 4 << 20, Frames: 1, Staging: "/var/lib/strata/staging/" + oid + ".zst"}
	case events.KindObjectStored:
		return &events.ObjectStored{ObjectID: oid, Tier: "hdd", TierKind: events.TierDirectory, Location: "/cold/objects/00/" + oid + ".zst",
			Size: 1 << 20, PackedSize: 1234, PackedSum: ObjectID(3)}
	case events.KindFileReleased:
		return &events.FileReleased{FileID: fid, Path: path, ObjectID: oid, Stat: Stat(1 << 20), Copies: 1}
	case events.KindFileReleaseSkipped:
		return &events.FileReleaseSkipped{FileID: fid, Path: path, ObjectID: oid, Reason: "mtime changed"}
	case events.KindFileModified:
		return &events.FileModified{FileID: fid, Path: path, ObjectID: oid, Stat: Stat(2 << 20)}
	case events.KindFileDeleted:
		return &events.FileDeleted{FileID: fid, Path: path}
	case events.KindFileMoved:
		return &events.FileMoved{FileID: fid, Path: path, From: "/hot/a/old.dat"}
	case events.KindFilePinned:
		return &events.FilePinned{Path: "/hot/a"}
	case events.KindFileUnpinned:
		return &events.FileUnpinned{Path: "/hot/a"}
	case events.KindRecallRequested:
		return &events.RecallRequested{FileID: fid, Path: path, ObjectID: oid, Offset: 4096, Length: 8192, PID: 42, Process: "cat", Exe: "/usr/bin/cat", Reason: events.RecallAccess}
	case events.KindRecallCompleted:
		return &events.RecallCompleted{FileID: fid, Path: path, ObjectID: oid, Bytes: 1 << 20, DurationNS: 3_000_000, SourceTier: "hdd", PID: 42, Process: "cat", Exe: "/usr/bin/cat"}
	case events.KindRecallFailed:
		return &events.RecallFailed{FileID: fid, Path: path, ObjectID: oid, Tier: "s3", Reason: "object missing", PID: 42, Process: "cat", Exe: "/usr/bin/cat"}
	case events.KindRecallStorm:
		return &events.RecallStorm{PID: 42, Process: "tar", Exe: "/usr/bin/tar", UID: 34, Cgroup: "/system.slice/backup.service",
			Recalls: 50, WithinNS: 400_000_000, WindowNS: 1_000_000_000, Total: 61, Rule: "backup", Action: events.RuleRecall, Path: path}
	case events.KindObjectVerified:
		return &events.ObjectVerified{ObjectID: oid, Tier: "hdd"}
	case events.KindObjectCorrupt:
		return &events.ObjectCorrupt{ObjectID: oid, Tier: "hdd", Reason: "frame 3: blake3 mismatch"}
	case events.KindObjectDeleted:
		return &events.ObjectDeleted{ObjectID: oid, Tier: "hdd", Reason: "retention: superseded version older than 30d"}
	case events.KindObjectStoreFailed:
		return &events.ObjectStoreFailed{ObjectID: oid, Tier: "hdd", Reason: "connection refused", Attempts: 2, RetryIn: int64(5 * time.Second)}
	}
	return nil
}

// TapeSample returns an object.stored event for a tape copy.
func TapeSample() *events.ObjectStored {
	return &events.ObjectStored{ObjectID: ObjectID(2), Tier: "lto", TierKind: events.TierTape, Location: "L00001/3",
		Size: 1 << 20, PackedSize: 1234, PackedSum: ObjectID(3),
		Tape: &events.TapePosition{Volume: "L00001", TapeFile: 3, Block: 1024, Offset: 512}}
}

// Envelope wraps ev in an envelope with a deterministic id built from n.
func Envelope(ev events.Event, n int) events.Envelope {
	env, err := events.New(events.NewID(ev.Kind(), fmt.Sprint(n)), events.Source("testhost", "test"),
		time.Unix(1_700_000_000+int64(n), 0), ev)
	if err != nil {
		panic(err)
	}
	return env
}
