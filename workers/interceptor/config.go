//go:build linux

package interceptor

import (
	"cmp"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/failpoint"
)

// Mode selects how stubs are guarded.
type Mode string

// Modes.
const (
	ModeAuto      Mode = "auto"       // pre-access when the kernel has it, else open-perm
	ModePreAccess Mode = "pre-access" // FAN_PRE_ACCESS inode marks, range-first recall (Linux ≥ 6.14)
	ModeOpenPerm  Mode = "open-perm"  // FAN_OPEN_PERM inode marks, whole-file recall at open
)

// Default values of Config.
const (
	DefaultChunkSize        = 4 << 20
	DefaultBackgroundFills  = 2
	DefaultStopTimeout      = 10 * time.Second
	DefaultWholeFileBelow   = 64 << 20
	DefaultRecoverTimeout   = 2 * time.Minute
	DefaultHolderSubcommand = "interceptor-holder"
	DefaultReadAhead        = 4 << 20
	DefaultSequentialAfter  = 8 << 20
	DefaultFillWholeBelow   = 64 << 20
	DefaultIdleAfter        = 30 * time.Second
)

// Config of an Interceptor.
type Config struct {
	// Mode: auto (default), pre-access or open-perm.
	Mode Mode
	// ChunkSize is the unit of a fill, in bytes: a positive multiple of
	// 4096. Fills are aligned to it. Default 4 MiB (one object frame).
	ChunkSize int64
	// BackgroundFills bounds the chunk fills running in the background
	// across all stubs. Fills that hold a program are not bounded.
	BackgroundFills int
	// StopTimeout is how long Close lets fills that hold a program finish
	// before their programs get EIO.
	StopTimeout time.Duration
	// WholeFileBelow: in mode pre-access, stubs smaller than this many
	// bytes are also marked FAN_OPEN_PERM and recalled whole at open. This
	// guards them against programs that look for data with
	// SEEK_DATA/SEEK_HOLE, which raises no event and sees a stub as one
	// hole (cp does this for files with few blocks, and would copy
	// zeros). Larger stubs keep range-first recall and stay exposed to
	// such programs unless they are named in WholeFilePrograms: see
	// README.md. Default 64 MiB; negative disables.
	WholeFileBelow int64
	// WholeFilePrograms: in mode pre-access, a stub of any size opened by
	// one of these programs is recalled whole before its open returns.
	// These programs look for data with SEEK_DATA/SEEK_HOLE before they
	// read; on a stub they would see one hole and copy zeros. A program
	// matches by the name it was started as (/proc/PID/comm: "cp" for a
	// busybox applet too) or by the base name of its executable. Nil:
	// DefaultWholeFilePrograms(); empty: none.
	WholeFilePrograms []string
	// MtimeCheckPrograms: in mode pre-access, on a filesystem where fills
	// cannot keep a stub's mtime still (ext4: the kernel stamps it at the
	// first write fault of every store, until the store puts it back; XFS
	// stores through a fd that leaves it alone), a stub of any size opened
	// by one of these programs is recalled whole before its open returns.
	// These programs compare a file's mtime before each read with the one
	// they listed and give up when it moved: rclone ("source file is being
	// updated"). Matched as WholeFilePrograms. Nil:
	// DefaultMtimeCheckPrograms(); empty: none.
	MtimeCheckPrograms []string
	// ReadAhead: after an access to a stub that is not filled whole (see
	// FillWholeBelow and SequentialAfter), the chunks of the next
	// ReadAhead bytes past it are filled in the background; the rest of
	// the file stays holes, and the stub stays partially resident. Default
	// 4 MiB; negative: none.
	ReadAhead int64
	// SequentialAfter: once accesses to a stub have read this many bytes
	// in sequence (each one starting where an earlier one ended; a few
	// streams at once are followed, so a multi-threaded copy counts), the
	// access looks sequential and the rest of the file is filled in the
	// background, as a program reading it all will want it. Default 8 MiB;
	// negative: never.
	SequentialAfter int64
	// FillWholeBelow: after the first access to a stub smaller than this,
	// the rest of it is filled in the background (small files are cheap
	// to recall, and a partial small file saves little). Larger stubs are
	// filled whole only when accessed sequentially. Default 64 MiB;
	// negative: none.
	FillWholeBelow int64
	// ResidentHead and ResidentTail: Release keeps this many bytes at the
	// start and at the end of the file resident (see stub.LayoutOf); the
	// releaser's release.resident_head and release.resident_tail. Accesses
	// that touch only resident bytes are answered at once, with no recall.
	ResidentHead, ResidentTail int64
	// IdleAfter: a recall of a partially resident stub with nothing in
	// flight for this long is dropped (its fd closed); the next access
	// starts another, which finds the filled chunks on disk. Default 30s.
	IdleAfter time.Duration
	// Guard, if set, is told which files are stubs: Mark and Release
	// register each one before its hole is punched, and a recall that
	// makes a stub whole unregisters it. workers/kernelguard implements it.
	Guard ProbeGuard
	// Rules say what programs may do with stubs (rules.go): the first
	// that matches the process of an event decides; a process none
	// matches recalls. Nil: none.
	Rules []Rule
	// StormRecalls: a process that starts this many recalls within
	// StormWindow is a recall storm: logged, published as recall.storm
	// and passed to OnStorm (at most once a minute per process). Zero:
	// DefaultStormRecalls; negative: no storm detection.
	StormRecalls int
	// StormWindow: see StormRecalls. Zero: DefaultStormWindow.
	StormWindow time.Duration
	// OnStorm is called for each storm reported. Same rules as
	// OnComplete.
	OnStorm func(Storm)
	// Emitter publishes the recall events (see stage.go); nil publishes
	// none (tests).
	Emitter *pipeline.Emitter
	// OnComplete is called once per stub whose whole content is back. It
	// runs on an interceptor goroutine: it must not block for long.
	OnComplete func(Completion)
	// OnFail is called for each access that was denied and for each
	// background fill that failed. Same rules as OnComplete.
	OnFail func(Failure)
	// OnOverflow is called (on its own goroutine) when the kernel reports
	// FAN_Q_OVERFLOW: events may have been lost, and the caller should
	// mark every stub again (Mark is idempotent).
	OnOverflow func()
	// OnAnswer is called for each permission event answered, with the
	// time from reading it to answering it and whether it was denied
	// (metrics). Same rules as OnComplete; it must be cheap: it runs for
	// every event.
	OnAnswer func(latency time.Duration, denied bool)
	// OnFirstByte is called once per recall, when the access that started
	// it is answered: the tier its first bytes came from ("" when they
	// were resident already), the time from the access to the answer, and
	// whether the access was denied. Same rules as OnComplete.
	OnFirstByte func(tier string, latency time.Duration, denied bool)

	// JournalDir holds the journal of events and fills in flight (one
	// file, "inflight"). With it, a restarted daemon answers the events a
	// crashed one had read (when the group survived in a holder) and
	// punches chunks a crashed fill left half written. Must be a
	// directory that is not a stub tree. Required with HolderSocket.
	JournalDir string
	// HolderSocket is the unix socket of a holder process (HolderMain)
	// that keeps a dup of the fanotify group fd, so that marks and
	// blocked programs outlive a crash of this process. Open takes the
	// group from the holder if it has one, else creates the group and
	// hands the holder a dup. Empty: no holder.
	HolderSocket string
	// HolderCommand is the argv that starts a holder when none listens
	// on HolderSocket. Default: this executable with
	// "interceptor-holder --socket HolderSocket". The holder is started in
	// its own session and outlives this process.
	HolderCommand []string
	// HolderGrace is how long, once this daemon has stopped or died,
	// programs touching stubs stay blocked waiting for a daemon to come
	// back (a restart answers them with their bytes); after it the holder
	// denies them with EIO until a daemon takes the group again. Zero:
	// DefaultHolderGrace; negative: deny at once.
	HolderGrace time.Duration
	// RecoverTimeout bounds the recovery of one orphaned event at Open;
	// past it the event is denied with EIO.
	RecoverTimeout time.Duration
	// Failpoints armed for crash tests (see failpoints.go). Zero: none.
	Failpoints failpoint.Set
}

// DefaultWholeFilePrograms returns the programs known to probe for holes
// before reading (checked with strace: cp and mv of coreutils 9, tar -S)
// and others documented to (bsdtar, rsync, qemu-img, ddrescue). Each reads
// a whole file anyway, so recalling it whole at open costs them nothing.
func DefaultWholeFilePrograms() []string {
	return []string{"cp", "mv", "install", "tar", "bsdtar", "rsync", "qemu-img", "ddrescue"}
}

// ProbeGuard stops programs that ask a stub where its data is
// (SEEK_DATA, SEEK_HOLE, FIEMAP): those raise no fanotify event and would
// take a stub for one hole. The fd is any open fd of the file.
type ProbeGuard interface {
	AddStub(fd int) error
	RemoveStub(fd int) error
}

// DefaultMtimeCheckPrograms returns the programs known to fail a copy
// when the source's mtime moves while they read it (rclone checks it
// before every read).
func DefaultMtimeCheckPrograms() []string {
	return []string{"rclone"}
}

// NewConfig returns a Config with every default set.
func NewConfig() Config {
	var c Config
	c.EnsureDefaults()
	return c
}

// EnsureDefaults sets every zero field to its default.
func (c *Config) EnsureDefaults() {
	c.Mode = cmp.Or(c.Mode, ModeAuto)
	c.ChunkSize = cmp.Or(c.ChunkSize, DefaultChunkSize)
	c.BackgroundFills = cmp.Or(c.BackgroundFills, DefaultBackgroundFills)
	c.StopTimeout = cmp.Or(c.StopTimeout, DefaultStopTimeout)
	c.WholeFileBelow = cmp.Or(c.WholeFileBelow, DefaultWholeFileBelow)
	c.RecoverTimeout = cmp.Or(c.RecoverTimeout, DefaultRecoverTimeout)
	c.HolderGrace = cmp.Or(c.HolderGrace, DefaultHolderGrace)
	c.ReadAhead = cmp.Or(c.ReadAhead, DefaultReadAhead)
	c.SequentialAfter = cmp.Or(c.SequentialAfter, DefaultSequentialAfter)
	c.FillWholeBelow = cmp.Or(c.FillWholeBelow, DefaultFillWholeBelow)
	c.IdleAfter = cmp.Or(c.IdleAfter, DefaultIdleAfter)
	c.StormRecalls = cmp.Or(c.StormRecalls, DefaultStormRecalls)
	c.StormWindow = cmp.Or(c.StormWindow, DefaultStormWindow)
	if c.WholeFilePrograms == nil {
		c.WholeFilePrograms = DefaultWholeFilePrograms()
	}
	if c.MtimeCheckPrograms == nil {
		c.MtimeCheckPrograms = DefaultMtimeCheckPrograms()
	}
	if c.HolderSocket != "" && len(c.HolderCommand) == 0 {
		if exe, err := os.Executable(); err == nil {
			c.HolderCommand = []string{exe, DefaultHolderSubcommand, "--socket", c.HolderSocket}
		}
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch c.Mode {
	case ModeAuto, ModePreAccess, ModeOpenPerm:
	default:
		return pipeline.NewConfigError("mode", c.Mode, fmt.Errorf("want %q, %q or %q", ModeAuto, ModePreAccess, ModeOpenPerm))
	}
	if c.ChunkSize <= 0 || c.ChunkSize%4096 != 0 || c.ChunkSize > 1<<30 {
		return pipeline.NewConfigError("chunk_size", c.ChunkSize, fmt.Errorf("want a positive multiple of 4096 up to 1 GiB"))
	}
	if c.BackgroundFills < 1 {
		return pipeline.NewConfigError("background_fills", c.BackgroundFills, fmt.Errorf("want at least 1"))
	}
	for key, list := range map[string][]string{"whole_file_programs": c.WholeFilePrograms, "mtime_check_programs": c.MtimeCheckPrograms} {
		for _, p := range list {
			if p == "" || strings.Contains(p, "/") {
				return pipeline.NewConfigError(key, list, fmt.Errorf("%q: want a program's name, without a directory", p))
			}
		}
	}
	if err := c.validateRules(); err != nil {
		return err
	}
	if c.HolderSocket != "" && c.JournalDir == "" {
		return pipeline.NewConfigError("journal_dir", c.JournalDir, fmt.Errorf("required with HolderSocket: events a crashed daemon read could never be answered"))
	}
	if c.RecoverTimeout < 0 {
		return pipeline.NewConfigError("recover_timeout", c.RecoverTimeout, fmt.Errorf("want a non-negative duration"))
	}
	if c.ResidentHead < 0 || c.ResidentTail < 0 {
		return pipeline.NewConfigError("resident_head", c.ResidentHead, fmt.Errorf("want a non-negative size"))
	}
	if c.IdleAfter < 0 {
		return pipeline.NewConfigError("idle_after", c.IdleAfter, fmt.Errorf("want a non-negative duration"))
	}
	if c.StopTimeout < 0 {
		return pipeline.NewConfigError("stop_timeout", c.StopTimeout, fmt.Errorf("want a non-negative duration"))
	}
	return nil
}
