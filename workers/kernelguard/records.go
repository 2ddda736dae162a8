//go:build linux

package kernelguard

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Op is what a prober asked the kernel, as far as the guard can tell.
type Op int

// Ops. The guard reads the prober's system call number and arguments on
// x86_64 only; elsewhere every record says OpUnknown.
const (
	OpUnknown  Op = iota
	OpSeekData    // lseek(fd, off, SEEK_DATA)
	OpSeekHole    // lseek(fd, off, SEEK_HOLE)
	OpFiemap      // ioctl(fd, FS_IOC_FIEMAP): filefrag, xfs_io fiemap
	OpFibmap      // ioctl(fd, FIBMAP): filefrag -B, LILO-style tools
	OpSwapon      // swapon(2) on a stub (it would fail anyway: holes)
	OpOther       // another system call (the number is in Record.Syscall)
)

func (o Op) String() string {
	switch o {
	case OpSeekData:
		return "lseek-SEEK_DATA"
	case OpSeekHole:
		return "lseek-SEEK_HOLE"
	case OpFiemap:
		return "ioctl-FIEMAP"
	case OpFibmap:
		return "ioctl-FIBMAP"
	case OpSwapon:
		return "swapon"
	case OpOther:
		return "other"
	}
	return "unknown"
}

// x86_64 system call numbers and arguments the guard recognises.
const (
	sysLseek  = 8
	sysIoctl  = 16
	sysSwapon = 167
	seekData  = 3
	seekHole  = 4
	fibmap    = 1
)

// Record reports one probe of a stub's hole, for the daemon to log, publish
// and act on (recall the file whole, so that a retry gets the bytes).
type Record struct {
	Op   Op
	PID  int    // thread
	TGID int    // process
	Comm string // the thread's comm (at most 15 bytes)
	Dev  uint64 // st_dev of the stub
	Ino  uint64 // st_ino of the stub
	// Offset and Length are the hole the kernel was about to report.
	Offset int64
	Length uint64
	// IomapFlags are the iomap iterator's flags (IOMAP_REPORT, 0x4, is set).
	IomapFlags uint32
	// Killed: SIGKILL was sent. False for ActionLog, for kernel threads
	// (nfsd, ksmbd: they cannot be signalled) and when the send failed
	// (SignalErr).
	Killed    bool
	SignalErr syscall.Errno
	// Syscall is the prober's x86_64 system call number, -1 if unknown
	// (another architecture, a kernel thread); Arg is lseek's whence or
	// ioctl's command.
	Syscall int
	Arg     uint64
}

// rawRecord mirrors struct record in bpf/guard.bpf.c.
type rawRecord struct {
	Ino        uint64
	Offset     int64
	Length     uint64
	Syscall    int64
	Arg        uint64
	Dev        uint32
	PID        uint32
	TGID       uint32
	IomapFlags uint32
	IomapType  uint16
	Kind       uint16
	Action     uint32
	SignalErr  int32
	_          uint32
	Comm       [16]byte
}

func (raw rawRecord) record() Record {
	r := Record{
		PID: int(raw.PID), TGID: int(raw.TGID),
		Comm: string(bytes.TrimRight(raw.Comm[:], "\x00")),
		Dev:  userDev(raw.Dev), Ino: raw.Ino,
		Offset: raw.Offset, Length: raw.Length, IomapFlags: raw.IomapFlags,
		Killed:  raw.Action == uint32(unix.SIGKILL),
		Syscall: int(raw.Syscall), Arg: raw.Arg,
	}
	if raw.SignalErr < 0 {
		r.SignalErr = syscall.Errno(-raw.SignalErr)
	}
	switch {
	case r.Syscall == sysLseek && r.Arg == seekData:
		r.Op = OpSeekData
	case r.Syscall == sysLseek && r.Arg == seekHole:
		r.Op = OpSeekHole
	case r.Syscall == sysIoctl && r.Arg == fsIocFiemap:
		r.Op = OpFiemap
	case r.Syscall == sysIoctl && r.Arg == fibmap:
		r.Op = OpFibmap
	case r.Syscall == sysSwapon:
		r.Op = OpSwapon
	case r.Syscall >= 0:
		r.Op = OpOther
	}
	return r
}

func (r Record) String() string {
	act := "logged"
	switch {
	case r.Killed:
		act = "killed"
	case r.SignalErr != 0:
		act = "kill failed (" + r.SignalErr.Error() + ")"
	}
	return fmt.Sprintf("%s %s pid %d (%s) on dev %d:%d ino %d: hole at %d+%d",
		act, r.Op, r.TGID, strconv.Quote(r.Comm), unix.Major(r.Dev), unix.Minor(r.Dev), r.Ino, r.Offset, r.Length)
}

// RecordReader reads the guard's records. Use one at a time: the records
// are a single ring buffer of 256 KiB (about 2,900 records), which drops
// new records while it is full (Counters.RecordsDropped).
type RecordReader struct{ rd *ringbuf.Reader }

// Records opens the guard's record stream.
func (g *Guard) Records() (*RecordReader, error) {
	rd, err := ringbuf.NewReader(g.coll.Maps[guardMapSgRecords])
	if err != nil {
		return nil, fmt.Errorf("kernelguard: records: %w", err)
	}
	return &RecordReader{rd: rd}, nil
}

// Read blocks for the next record, until the deadline set by SetDeadline
// (then the error wraps os.ErrDeadlineExceeded) or Close (os.ErrClosed).
func (r *RecordReader) Read() (Record, error) {
	rec, err := r.rd.Read()
	if err != nil {
		return Record{}, fmt.Errorf("kernelguard: read record: %w", err)
	}
	var raw rawRecord
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return Record{}, fmt.Errorf("kernelguard: decode record: %w", err)
	}
	return raw.record(), nil
}

// SetDeadline makes Read return when t passes; the zero time means never.
func (r *RecordReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Close stops the reader; a blocked Read returns.
func (r *RecordReader) Close() error { return r.rd.Close() }
