package events

import (
	"errors"
	"fmt"
	"path/filepath"
)

// Kinds of every event Strata publishes.
var (
	KindFileSelected       = Kind{"file", "selected", 1}
	KindObjectPacked       = Kind{"object", "packed", 1}
	KindObjectStored       = Kind{"object", "stored", 1}
	KindFileReleased       = Kind{"file", "released", 1}
	KindFileReleaseSkipped = Kind{"file", "release_skipped", 1}
	KindFileModified       = Kind{"file", "modified", 1}
	KindFileDeleted        = Kind{"file", "deleted", 1}
	KindFileMoved          = Kind{"file", "moved", 1}
	KindFilePinned         = Kind{"file", "pinned", 1}
	KindFileUnpinned       = Kind{"file", "unpinned", 1}
	KindRecallRequested    = Kind{"recall", "requested", 1}
	KindRecallCompleted    = Kind{"recall", "completed", 1}
	KindRecallFailed       = Kind{"recall", "failed", 1}
	KindRecallStorm        = Kind{"recall", "storm", 1}
	KindObjectVerified     = Kind{"object", "verified", 1}
	KindObjectCorrupt      = Kind{"object", "corrupt", 1}
	KindObjectDeleted      = Kind{"object", "deleted", 1}
	KindObjectStoreFailed  = Kind{"object", "store_failed", 1}
)

// registry maps a CloudEvents type to a constructor of its payload.
var registry = map[string]func() Event{
	KindFileSelected.Type():       func() Event { return new(FileSelected) },
	KindObjectPacked.Type():       func() Event { return new(ObjectPacked) },
	KindObjectStored.Type():       func() Event { return new(ObjectStored) },
	KindFileReleased.Type():       func() Event { return new(FileReleased) },
	KindFileReleaseSkipped.Type(): func() Event { return new(FileReleaseSkipped) },
	KindFileModified.Type():       func() Event { return new(FileModified) },
	KindFileDeleted.Type():        func() Event { return new(FileDeleted) },
	KindFileMoved.Type():          func() Event { return new(FileMoved) },
	KindFilePinned.Type():         func() Event { return new(FilePinned) },
	KindFileUnpinned.Type():       func() Event { return new(FileUnpinned) },
	KindRecallRequested.Type():    func() Event { return new(RecallRequested) },
	KindRecallCompleted.Type():    func() Event { return new(RecallCompleted) },
	KindRecallFailed.Type():       func() Event { return new(RecallFailed) },
	KindRecallStorm.Type():        func() Event { return new(RecallStorm) },
	KindObjectVerified.Type():     func() Event { return new(ObjectVerified) },
	KindObjectCorrupt.Type():      func() Event { return new(ObjectCorrupt) },
	KindObjectDeleted.Type():      func() Event { return new(ObjectDeleted) },
	KindObjectStoreFailed.Type():  func() Event { return new(ObjectStoreFailed) },
}

// Kinds returns every registered event kind, for tests and documentation.
func Kinds() []Kind {
	return []Kind{
		KindFileSelected, KindObjectPacked, KindObjectStored, KindFileReleased,
		KindFileReleaseSkipped, KindFileModified, KindFileDeleted, KindFileMoved, KindFilePinned,
		KindFileUnpinned, KindRecallRequested, KindRecallCompleted, KindRecallFailed,
		KindRecallStorm, KindObjectVerified, KindObjectCorrupt, KindObjectDeleted, KindObjectStoreFailed,
	}
}

// NewEvent returns a zero payload for kind k, or nil if k is unknown.
func NewEvent(k Kind) Event {
	f, ok := registry[k.Type()]
	if !ok {
		return nil
	}
	return f()
}

// FileStat is what Strata observed of a hot file at one moment. The
// releaser compares it with the file as it is now: any difference means the
// file changed since it was read.
type FileStat struct {
	Size       int64  `json:"size"`
	Mode       uint32 `json:"mode"`
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
	AtimeNS    int64  `json:"atime_ns"`
	MtimeNS    int64  `json:"mtime_ns"`
	CtimeNS    int64  `json:"ctime_ns"`
	Dev        uint64 `json:"dev"`
	Inode      uint64 `json:"inode"`
	Generation uint64 `json:"generation"`
}

// SameContent reports whether s and o describe the same unchanged file:
// same inode and generation, size, mtime and ctime.
func (s FileStat) SameContent(o FileStat) bool {
	return s.Dev == o.Dev && s.Inode == o.Inode && s.Generation == o.Generation &&
		s.Size == o.Size && s.MtimeNS == o.MtimeNS && s.CtimeNS == o.CtimeNS
}

// Diff names the first field in which o differs from s, or "" if it does not
// differ in content-relevant fields.
func (s FileStat) Diff(o FileStat) string {
	switch {
	case s.Dev != o.Dev || s.Inode != o.Inode:
		return "inode changed (file replaced)"
	case s.Generation != o.Generation:
		return "inode generation changed (file replaced)"
	case s.Size != o.Size:
		return fmt.Sprintf("size changed from %d to %d", s.Size, o.Size)
	case s.MtimeNS != o.MtimeNS:
		return "mtime changed"
	case s.CtimeNS != o.CtimeNS:
		return "ctime changed"
	}
	return ""
}

func (s FileStat) validate() error {
	if s.Size < 0 {
		return errors.New("negative size")
	}
	if s.Inode == 0 {
		return errors.New("missing inode")
	}
	return nil
}

// Selection reasons.
const (
	ReasonPolicy    = "policy"    // age, size and globs matched
	ReasonWatermark = "watermark" // hot tier above its high watermark
	ReasonManual    = "manual"    // strata archive
)

// FileSelected: the scanner (or strata archive) chose a hot file to archive.
type FileSelected struct {
	FileID string   `json:"file_id"`
	Path   string   `json:"path"`
	Root   string   `json:"root"`
	Stat   FileStat `json:"stat"`
	Reason string   `json:"reason"`
}

func (*FileSelected) Kind() Kind       { return KindFileSelected }
func (e *FileSelected) Entity() string { return e.FileID }
func (e *FileSelected) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path), absPath("root", e.Root),
		e.Stat.validate(), oneOf("reason", e.Reason, ReasonPolicy, ReasonWatermark, ReasonManual))
}

// ObjectPacked: the compressor read a selected file once and wrote its
// content as a seekable zstd object in staging. Stat is the file as it was
// before and after reading (the compressor refuses a file that changed
// while it was read).
type ObjectPacked struct {
	FileID     string   `json:"file_id"`
	Path       string   `json:"path"`
	ObjectID   string   `json:"object_id"`
	Stat       FileStat `json:"stat"`
	Size       int64    `json:"size"`
	PackedSize int64    `json:"packed_size"`
	PackedSum  string   `json:"packed_sum"`
	FrameSize  int64    `json:"frame_size"`
	Frames     int64    `json:"frames"`
	Staging    string   `json:"staging"`
}

func (*ObjectPacked) Kind() Kind       { return KindObjectPacked }
func (e *ObjectPacked) Entity() string { return e.ObjectID }
func (e *ObjectPacked) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path), hash("object_id", e.ObjectID),
		e.Stat.validate(), hash("packed_sum", e.PackedSum), absPath("staging", e.Staging),
		nonNegative("size", e.Size), positive("packed_size", e.PackedSize),
		positive("frame_size", e.FrameSize), nonNegative("frames", e.Frames),
		check(e.Stat.Size == e.Size, "stat.size differs from size"))
}

// TapePosition locates an object on tape.
type TapePosition struct {
	Volume   string `json:"volume"`
	TapeFile int64  `json:"tape_file"`
	Block    int64  `json:"block"`
	Offset   int64  `json:"offset"`
}

// ObjectStored: a copy of an object is durable on a tier and was read back
// and verified.
type ObjectStored struct {
	ObjectID   string        `json:"object_id"`
	Tier       string        `json:"tier"`
	TierKind   string        `json:"tier_kind"`
	Location   string        `json:"location"`
	Size       int64         `json:"size"`
	PackedSize int64         `json:"packed_size"`
	PackedSum  string        `json:"packed_sum"`
	Tape       *TapePosition `json:"tape,omitempty"`
}

// Tier kinds.
const (
	TierDirectory = "directory"
	TierS3        = "s3"
	TierRclone    = "rclone"
	TierTape      = "tape"
)

func (*ObjectStored) Kind() Kind       { return KindObjectStored }
func (e *ObjectStored) Entity() string { return e.ObjectID }
func (e *ObjectStored) Validate() error {
	return all(hash("object_id", e.ObjectID), name("tier", e.Tier),
		oneOf("tier_kind", e.TierKind, TierDirectory, TierS3, TierRclone, TierTape),
		nonEmpty("location", e.Location), nonNegative("size", e.Size),
		positive("packed_size", e.PackedSize), hash("packed_sum", e.PackedSum),
		check((e.Tape != nil) == (e.TierKind == TierTape), "tape position is required for tape copies only"))
}

// FileReleased: a hot file became a stub. Its data blocks are freed; its
// xattrs name the object that holds its content.
type FileReleased struct {
	FileID   string   `json:"file_id"`
	Path     string   `json:"path"`
	ObjectID string   `json:"object_id"`
	Stat     FileStat `json:"stat"`
	Copies   int      `json:"copies"`
}

func (*FileReleased) Kind() Kind       { return KindFileReleased }
func (e *FileReleased) Entity() string { return e.FileID }
func (e *FileReleased) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path), hash("object_id", e.ObjectID),
		e.Stat.validate(), positive("copies", int64(e.Copies)))
}

// FileReleaseSkipped: a file was not released; it stays hot and may be
// selected again later. ObjectID is empty when the file could not even be
// packed (it changed while being read, vanished, is unreadable).
type FileReleaseSkipped struct {
	FileID   string `json:"file_id"`
	Path     string `json:"path"`
	ObjectID string `json:"object_id,omitempty"`
	Reason   string `json:"reason"`
}

func (*FileReleaseSkipped) Kind() Kind       { return KindFileReleaseSkipped }
func (e *FileReleaseSkipped) Entity() string { return e.FileID }
func (e *FileReleaseSkipped) Validate() error {
	var oid error
	if e.ObjectID != "" {
		oid = hash("object_id", e.ObjectID)
	}
	return all(fileID(e.FileID), absPath("path", e.Path), oid, nonEmpty("reason", e.Reason))
}

// FileModified: an archived file's content changed; its cold copies no
// longer match and it is dirty until archived again.
type FileModified struct {
	FileID   string   `json:"file_id"`
	Path     string   `json:"path"`
	ObjectID string   `json:"object_id"`
	Stat     FileStat `json:"stat"`
}

func (*FileModified) Kind() Kind       { return KindFileModified }
func (e *FileModified) Entity() string { return e.FileID }
func (e *FileModified) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path), hash("object_id", e.ObjectID), e.Stat.validate())
}

// FileDeleted: a managed file was removed. Its objects stay until a
// retention policy prunes them.
type FileDeleted struct {
	FileID string `json:"file_id"`
	Path   string `json:"path"`
}

func (*FileDeleted) Kind() Kind       { return KindFileDeleted }
func (e *FileDeleted) Entity() string { return e.FileID }
func (e *FileDeleted) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path))
}

// FileMoved: a stub was found at another path than the one last recorded
// (renamed, or its directory was). A file's identity is its id, kept in its
// xattrs; this keeps the catalog's path, and the exported path-to-object
// map, true.
type FileMoved struct {
	FileID string `json:"file_id"`
	Path   string `json:"path"` // where it is now
	From   string `json:"from"` // where it was last recorded
}

func (*FileMoved) Kind() Kind       { return KindFileMoved }
func (e *FileMoved) Entity() string { return e.FileID }
func (e *FileMoved) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path), absPath("from", e.From))
}

// FilePinned: a path (file or directory tree) is never to be archived.
type FilePinned struct {
	Path string `json:"path"`
}

func (*FilePinned) Kind() Kind       { return KindFilePinned }
func (e *FilePinned) Entity() string { return e.Path }
func (e *FilePinned) Validate() error {
	return absPath("path", e.Path)
}

// FileUnpinned: a pinned path may be archived again.
type FileUnpinned struct {
	Path string `json:"path"`
}

func (*FileUnpinned) Kind() Kind       { return KindFileUnpinned }
func (e *FileUnpinned) Entity() string { return e.Path }
func (e *FileUnpinned) Validate() error {
	return absPath("path", e.Path)
}

// Recall reasons.
const (
	RecallAccess   = "access"   // a program touched a stub
	RecallPrefetch = "prefetch" // strata recall
	RecallRestore  = "restore"  // strata restore
	// RecallProbe: a program asked where a stub's data is (SEEK_DATA,
	// FIEMAP) and the probe guard stopped it; the stub is recalled whole
	// so that its retry gets the bytes.
	RecallProbe = "probe"
)

// RecallRequested: bytes of a stub are wanted back.
type RecallRequested struct {
	FileID   string `json:"file_id"`
	Path     string `json:"path"`
	ObjectID string `json:"object_id"`
	Offset   int64  `json:"offset"`
	Length   int64  `json:"length"`
	PID      int32  `json:"pid,omitempty"`
	Process  string `json:"process,omitempty"`
	Exe      string `json:"exe,omitempty"` // the executable of PID, when it could be read
	Reason   string `json:"reason"`
}

func (*RecallRequested) Kind() Kind       { return KindRecallRequested }
func (e *RecallRequested) Entity() string { return e.FileID }
func (e *RecallRequested) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path), hash("object_id", e.ObjectID),
		nonNegative("offset", e.Offset), nonNegative("length", e.Length),
		oneOf("reason", e.Reason, RecallAccess, RecallPrefetch, RecallRestore, RecallProbe))
}

// RecallCompleted: the whole content of a stub is back and verified; the
// file is resident and archived-clean.
type RecallCompleted struct {
	FileID     string `json:"file_id"`
	Path       string `json:"path"`
	ObjectID   string `json:"object_id"`
	Bytes      int64  `json:"bytes"`
	DurationNS int64  `json:"duration_ns"`
	SourceTier string `json:"source_tier"`
	PID        int32  `json:"pid,omitempty"`
	Process    string `json:"process,omitempty"`
	Exe        string `json:"exe,omitempty"` // the executable of PID, when it could be read
}

func (*RecallCompleted) Kind() Kind       { return KindRecallCompleted }
func (e *RecallCompleted) Entity() string { return e.FileID }
func (e *RecallCompleted) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path), hash("object_id", e.ObjectID),
		nonNegative("bytes", e.Bytes), nonNegative("duration_ns", e.DurationNS),
		name("source_tier", e.SourceTier))
}

// RecallFailed: bytes could not be produced and verified from a tier (Tier
// set) or from any tier (Tier empty: the program got EIO).
type RecallFailed struct {
	FileID   string `json:"file_id"`
	Path     string `json:"path"`
	ObjectID string `json:"object_id"`
	Tier     string `json:"tier,omitempty"`
	Reason   string `json:"reason"`
	PID      int32  `json:"pid,omitempty"`
	Process  string `json:"process,omitempty"`
	Exe      string `json:"exe,omitempty"` // the executable of PID, when it could be read
}

func (*RecallFailed) Kind() Kind       { return KindRecallFailed }
func (e *RecallFailed) Entity() string { return e.FileID }
func (e *RecallFailed) Validate() error {
	return all(fileID(e.FileID), absPath("path", e.Path), hash("object_id", e.ObjectID),
		nonEmpty("reason", e.Reason))
}

// Recall rule actions, as a recall.storm names them (the interceptor's
// rules: what a program may do with stubs).
const (
	RuleRecall   = "recall"
	RuleDeny     = "deny"
	RuleThrottle = "throttle"
	RuleHeadOnly = "head-only"
)

// RecallStorm: one process started many recalls in a short time (IBM's
// "recall storm": a backup, an indexer or a virus scanner walking a tree
// of stubs). Recalls recalls began within WithinNS, at most WindowNS (the
// configured window); Path is the stub whose recall crossed the threshold.
// It describes a process, not a file: the catalog records nothing of it.
type RecallStorm struct {
	PID      int32  `json:"pid"`
	Process  string `json:"process,omitempty"` // /proc/<pid>/comm
	Exe      string `json:"exe,omitempty"`     // /proc/<pid>/exe
	UID      uint32 `json:"uid"`               // effective uid
	Cgroup   string `json:"cgroup,omitempty"`  // cgroup v2 path
	Recalls  int64  `json:"recalls"`
	WithinNS int64  `json:"within_ns"`
	WindowNS int64  `json:"window_ns"`
	Total    int64  `json:"total"` // recalls this process started since the daemon first saw it
	Rule     string `json:"rule,omitempty"`
	Action   string `json:"action"`
	Path     string `json:"path"`
}

func (*RecallStorm) Kind() Kind       { return KindRecallStorm }
func (e *RecallStorm) Entity() string { return fmt.Sprintf("pid/%d", e.PID) }
func (e *RecallStorm) Validate() error {
	return all(positive("pid", int64(e.PID)), positive("recalls", e.Recalls), nonNegative("within_ns", e.WithinNS),
		positive("window_ns", e.WindowNS), check(e.WithinNS <= e.WindowNS, "within_ns exceeds window_ns"),
		check(e.Total >= e.Recalls, "total below recalls"), absPath("path", e.Path),
		oneOf("action", e.Action, RuleRecall, RuleThrottle))
}

// ObjectVerified: a scrub re-read a copy and every frame matched.
type ObjectVerified struct {
	ObjectID string `json:"object_id"`
	Tier     string `json:"tier"`
}

func (*ObjectVerified) Kind() Kind       { return KindObjectVerified }
func (e *ObjectVerified) Entity() string { return e.ObjectID }
func (e *ObjectVerified) Validate() error {
	return all(hash("object_id", e.ObjectID), name("tier", e.Tier))
}

// ObjectCorrupt: a copy is missing, unreadable or fails verification. The
// copy no longer counts; a good copy will be used to re-create it.
type ObjectCorrupt struct {
	ObjectID string `json:"object_id"`
	Tier     string `json:"tier"`
	Reason   string `json:"reason"`
}

func (*ObjectCorrupt) Kind() Kind       { return KindObjectCorrupt }
func (e *ObjectCorrupt) Entity() string { return e.ObjectID }
func (e *ObjectCorrupt) Validate() error {
	return all(hash("object_id", e.ObjectID), name("tier", e.Tier), nonEmpty("reason", e.Reason))
}

// ObjectStoreFailed: a tier's store stage could not copy an object: why,
// after how many attempts, and whether it gives up (Permanent: retrying
// cannot help, e.g. the object is larger than the whole tier) or tries
// again after RetryIn. Published on the first failure, then on the 2nd,
// 4th, 8th… attempt and when the reason changes; the next object.stored
// for the tier ends it.
type ObjectStoreFailed struct {
	ObjectID  string `json:"object_id"`
	Tier      string `json:"tier"`
	Reason    string `json:"reason"`
	Attempts  int    `json:"attempts"`
	Permanent bool   `json:"permanent,omitempty"`
	// RetryIn is the delay before the next attempt, in nanoseconds (0 when
	// Permanent).
	RetryIn int64 `json:"retry_in_ns,omitempty"`
}

func (*ObjectStoreFailed) Kind() Kind       { return KindObjectStoreFailed }
func (e *ObjectStoreFailed) Entity() string { return e.ObjectID }
func (e *ObjectStoreFailed) Validate() error {
	return all(hash("object_id", e.ObjectID), name("tier", e.Tier), nonEmpty("reason", e.Reason),
		nonNegative("attempts", int64(e.Attempts)), nonNegative("retry_in_ns", e.RetryIn))
}

// ObjectDeleted: a copy was removed from a tier by retention (strata prune).
type ObjectDeleted struct {
	ObjectID string `json:"object_id"`
	Tier     string `json:"tier"`
	Reason   string `json:"reason"`
}

func (*ObjectDeleted) Kind() Kind       { return KindObjectDeleted }
func (e *ObjectDeleted) Entity() string { return e.ObjectID }
func (e *ObjectDeleted) Validate() error {
	return all(hash("object_id", e.ObjectID), name("tier", e.Tier), nonEmpty("reason", e.Reason))
}

// --- field checks -----------------------------------------------------------

func all(errs ...error) error { return errors.Join(errs...) }

func check(ok bool, msg string) error {
	if ok {
		return nil
	}
	return errors.New(msg)
}

// fileID checks a file id: 32 lowercase hex digits.
func fileID(s string) error {
	if !isHex(s, 32) {
		return fmt.Errorf("file_id %q: want 32 lowercase hex digits", s)
	}
	return nil
}

// hash checks a BLAKE3-256 digest: 64 lowercase hex digits.
func hash(field, s string) error {
	if !isHex(s, 64) {
		return fmt.Errorf("%s %q: want 64 lowercase hex digits (BLAKE3-256)", field, s)
	}
	return nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func absPath(field, p string) error {
	if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("%s %q: want a clean absolute path", field, p)
	}
	for i := 0; i < len(p); i++ {
		if p[i] == 0 {
			return fmt.Errorf("%s: contains NUL", field)
		}
	}
	return nil
}

func nonEmpty(field, s string) error {
	if s == "" {
		return fmt.Errorf("%s: empty", field)
	}
	return nil
}

// name checks a tier or stage name: a NATS subject token.
func name(field, s string) error {
	if !ValidToken(s) {
		return fmt.Errorf("%s %q: want letters, digits, '-' or '_'", field, s)
	}
	return nil
}

func nonNegative(field string, v int64) error {
	if v < 0 {
		return fmt.Errorf("%s: negative (%d)", field, v)
	}
	return nil
}

func positive(field string, v int64) error {
	if v <= 0 {
		return fmt.Errorf("%s: want > 0, got %d", field, v)
	}
	return nil
}

func oneOf(field, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("%s %q: want one of %v", field, v, allowed)
}
