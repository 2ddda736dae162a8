//go:build linux

package tape

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ST is the real driver: a non-rewinding st device (/dev/nstX) driven by
// read/write and the MTIOCTOP, MTIOCGET and MTIOCPOS ioctls.
//
// It cannot be exercised on machines without a tape drive (there is no st
// device in CI); only the ioctl numbers and struct layouts are tested
// (mtio_linux_test.go). Everything above it is tested on the Emulator,
// which implements the same semantics.
type ST struct {
	path string
	fd   int
}

var _ Drive = (*ST)(nil)

// OpenST opens the st device at path (use the non-rewinding /dev/nstX),
// read-write unless readOnly.
func OpenST(path string, readOnly bool) (*ST, error) {
	flags := unix.O_RDWR
	if readOnly {
		flags = unix.O_RDONLY
	}
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tape %s: %w", path, mapErrno(err))
	}
	return &ST{path: path, fd: fd}, nil
}

func mapErrno(err error) error {
	switch {
	case errors.Is(err, unix.ENOSPC):
		return ErrNoSpace
	case errors.Is(err, unix.ENOMEM):
		return ErrShortBuffer
	case errors.Is(err, unix.ENOMEDIUM):
		return ErrNoTape
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EROFS):
		return ErrWriteProtected
	}
	return err
}

func (s *ST) op(name string, op int16, count int32) error {
	m := mtop{op: op, count: count}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s.fd), mtiocTop, uintptr(unsafe.Pointer(&m)))
	if e != 0 {
		return fmt.Errorf("%s %s: %w", name, s.path, mapErrno(e))
	}
	return nil
}

// WriteBlock writes one record.
func (s *ST) WriteBlock(p []byte) error {
	n, err := unix.Write(s.fd, p)
	if err != nil {
		return fmt.Errorf("write block %s: %w", s.path, mapErrno(err))
	}
	if n != len(p) {
		return fmt.Errorf("write block %s: short write %d of %d: %w", s.path, n, len(p), ErrMedium)
	}
	return nil
}

// WriteFilemarks writes n filemarks, flushing (MTWEOF) or not (MTWEOFI).
func (s *ST) WriteFilemarks(n int, flush bool) error {
	if flush {
		return s.op("write filemark", mtWEOF, int32(n))
	}
	return s.op("write filemark", mtWEOFI, int32(n))
}

// ReadBlock reads one record; (0, nil) at a filemark.
func (s *ST) ReadBlock(p []byte) (int, error) {
	n, err := unix.Read(s.fd, p)
	if err != nil {
		if errors.Is(err, unix.EIO) {
			if st, serr := s.Status(); serr == nil && st.EOD {
				return 0, fmt.Errorf("read block %s: %w", s.path, ErrEndOfData)
			}
		}
		return 0, fmt.Errorf("read block %s: %w", s.path, mapErrno(err))
	}
	return n, nil
}

// SpaceFilemarks spaces forward (n > 0) or backward (n < 0) over filemarks.
func (s *ST) SpaceFilemarks(n int) error {
	switch {
	case n > 0:
		return s.op("space forward", mtFSF, int32(n))
	case n < 0:
		return s.op("space back", mtBSF, int32(-n))
	}
	return nil
}

// Locate moves to logical block b.
func (s *ST) Locate(b int64) error { return s.op("locate", mtSEEK, int32(b)) }

// Tell returns the logical block number.
func (s *ST) Tell() (int64, error) {
	var p mtpos
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s.fd), mtiocPos, uintptr(unsafe.Pointer(&p)))
	if e != 0 {
		return 0, fmt.Errorf("tell %s: %w", s.path, mapErrno(e))
	}
	return p.blkno, nil
}

// Rewind rewinds.
func (s *ST) Rewind() error { return s.op("rewind", mtREW, 1) }

// EndOfData moves to end of data.
func (s *ST) EndOfData() error { return s.op("end of data", mtEOM, 1) }

// Status reads MTIOCGET.
func (s *ST) Status() (Status, error) {
	var g mtget
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s.fd), mtiocGet, uintptr(unsafe.Pointer(&g)))
	if e != 0 {
		return Status{}, fmt.Errorf("status %s: %w", s.path, mapErrno(e))
	}
	return statusFromMtget(g), nil
}

func statusFromMtget(g mtget) Status {
	b := uint64(g.gstat)
	return Status{
		Online:         b&gmtONLINE != 0,
		BOT:            b&gmtBOT != 0,
		EOF:            b&gmtEOF != 0,
		EOT:            b&gmtEOT != 0,
		EOD:            b&gmtEOD != 0,
		WriteProtected: b&gmtWRPROT != 0,
		DoorOpen:       b&gmtDROPEN != 0,
		File:           int64(g.fileno),
		Block:          int64(g.blkno),
		BlockSize:      int(g.dsreg & 0xffffff), // MT_ST_BLKSIZE_MASK
	}
}

// Load loads the cartridge.
func (s *ST) Load() error { return s.op("load", mtLOAD, 1) }

// Unload rewinds and ejects the cartridge.
func (s *ST) Unload() error { return s.op("unload", mtUNLOAD, 1) }

// SetBlockSize sets the block size (0: variable).
func (s *ST) SetBlockSize(n int) error { return s.op("set block size", mtSETBLK, int32(n)) }

// SetCompression turns drive compression on or off.
func (s *ST) SetCompression(on bool) error {
	c := int32(0)
	if on {
		c = 1
	}
	return s.op("set compression", mtCOMPRESSION, c)
}

// Close closes the device (st writes a filemark if the last op was a write).
func (s *ST) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil {
		return fmt.Errorf("close %s: %w", s.path, err)
	}
	return nil
}
