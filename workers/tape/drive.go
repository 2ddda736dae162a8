// Package tape talks to tape drives the way the Linux st driver exposes
// them: a small Drive interface mirroring the st operations Strata needs,
// the real driver on /dev/nstX (ioctls MTIOCTOP, MTIOCGET, MTIOCPOS), and a
// file-backed Emulator, faithful to st, with a virtual clock that models
// drive speed, speed matching, backhitches, serpentine seeks and load and
// rewind times without sleeping.
//
// The drive works in variable block mode: every WriteBlock is one record
// on tape, every ReadBlock returns one record. Logical block numbers, as
// used by Locate and Tell, count filemarks as blocks (SCSI LOCATE semantics).
// Tape file N starts after the Nth filemark.
package tape

import (
	"errors"
	"fmt"
	"syscall"
)

// Drive is one tape drive with (perhaps) a cartridge in it. Its methods
// map one to one onto st operations; they are not safe for concurrent use
// (a drive has one head). Errors wrap the sentinels below, which wrap the
// errno st returns, so errors.Is works with either.
type Drive interface {
	// WriteBlock writes p as one record at the current position and
	// discards everything after it (end of data moves here). Past the
	// early warning it returns ErrNoSpace alternately with success, as st
	// does, until the physical end, where it always returns ErrNoSpace.
	// A write that returns ErrNoSpace wrote nothing.
	WriteBlock(p []byte) error
	// WriteFilemarks writes n filemarks. flush=true is MTWEOF: the drive
	// writes its buffer to the medium before returning, so everything
	// written before is durable. flush=false is MTWEOFI: the filemarks are
	// only buffered and a power loss may drop them and the data before.
	WriteFilemarks(n int, flush bool) error
	// ReadBlock reads the next record into p. It returns (0, nil) when it
	// crosses a filemark (the position is then after the filemark), and
	// ErrEndOfData at end of data. A record larger than p fails with
	// ErrShortBuffer; like st, the position is then after that record.
	ReadBlock(p []byte) (int, error)
	// SpaceFilemarks moves over |n| filemarks: forward (MTFSF, ends after
	// the filemark) when n > 0, backward (MTBSF, ends before it) when n < 0.
	SpaceFilemarks(n int) error
	// Locate moves to logical block b (MTSEEK); Tell returns the current one
	// (MTIOCPOS).
	Locate(b int64) error
	Tell() (int64, error)
	// Rewind moves to the beginning of tape (MTREW).
	Rewind() error
	// EndOfData moves to end of recorded data, ready to append (MTEOM).
	EndOfData() error
	// Status reports the drive and position state (MTIOCGET).
	Status() (Status, error)
	// Load loads the cartridge in the drive (MTLOAD); Unload rewinds and
	// ejects it (MTUNLOAD).
	Load() error
	Unload() error
	// SetBlockSize sets the block size, 0 for variable (MTSETBLK).
	SetBlockSize(n int) error
	// SetCompression turns drive compression on or off (MTCOMPRESSION).
	// Strata writes zstd data and turns it off.
	SetCompression(on bool) error
	// Close closes the device. After a data write (not after
	// WriteFilemarks) st writes a filemark on close; so does the emulator.
	Close() error
}

// Status is the drive state, as MTIOCGET reports it.
type Status struct {
	Online         bool
	BOT            bool  // at the beginning of tape
	EOF            bool  // just after a filemark
	EOT            bool  // past the early warning (or at physical end)
	EOD            bool  // at end of recorded data
	WriteProtected bool  // the cartridge is write protected
	DoorOpen       bool  // no cartridge
	File           int64 // tape file number (filemarks before the position), -1 if unknown
	Block          int64 // block number within the file, -1 if unknown
	BlockSize      int   // 0 for variable block mode
}

// Errors of tape operations. Each wraps the errno st returns.
var (
	// ErrNoTape: no cartridge loaded (ENOMEDIUM).
	ErrNoTape = fmt.Errorf("tape: no tape loaded: %w", syscall.ENOMEDIUM)
	// ErrWriteProtected: the cartridge is write protected (EACCES).
	ErrWriteProtected = fmt.Errorf("tape: write protected: %w", syscall.EACCES)
	// ErrNoSpace: early warning or physical end of medium (ENOSPC).
	ErrNoSpace = fmt.Errorf("tape: end of medium: %w", syscall.ENOSPC)
	// ErrShortBuffer: the record is larger than the read buffer (ENOMEM).
	ErrShortBuffer = fmt.Errorf("tape: record larger than buffer: %w", syscall.ENOMEM)
	// ErrEndOfData: read or space past the end of recorded data (EIO,
	// "blank check").
	ErrEndOfData = fmt.Errorf("tape: end of data: %w", syscall.EIO)
	// ErrMedium: a medium or hardware error (EIO).
	ErrMedium = fmt.Errorf("tape: medium error: %w", syscall.EIO)
	// ErrBeginningOfTape: spacing or seeking before the beginning.
	ErrBeginningOfTape = fmt.Errorf("tape: beginning of tape: %w", syscall.EIO)
)

// SeekFile positions d at the start of tape file n (0 = the label): a
// rewind followed by MTFSF n, as `mt -f /dev/nst0 rewind; mt fsf N`.
func SeekFile(d Drive, n int) error {
	if n < 0 {
		return fmt.Errorf("seek tape file %d: negative file number", n)
	}
	if err := d.Rewind(); err != nil {
		return fmt.Errorf("seek tape file %d: %w", n, err)
	}
	if n == 0 {
		return nil
	}
	if err := d.SpaceFilemarks(n); err != nil {
		return fmt.Errorf("seek tape file %d: %w", n, err)
	}
	return nil
}

// IsEndOfMedium reports whether err is the end-of-medium signal.
func IsEndOfMedium(err error) bool { return errors.Is(err, ErrNoSpace) }
