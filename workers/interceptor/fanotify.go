//go:build linux

package interceptor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// This file is the seam to the kernel: every fanotify system call and the
// wire format of events and responses. Nothing else in the package calls
// fanotify_init, fanotify_mark or reads the group fd.

const (
	metadataLen  = unix.FAN_EVENT_METADATA_LEN // 24
	rangeInfoLen = 24                          // {u8 type; u8 pad; u16 len; u32 pad; u64 offset; u64 count}
	metadataVers = 3                           // FANOTIFY_METADATA_VERSION
	readBufSize  = 64 << 10
)

// event is one decoded fanotify event.
type event struct {
	mask     uint64
	fd       int // FAN_NOFD for an overflow
	pid      int32
	hasRange bool
	off      int64
	count    int64
	at       time.Time // when it was read (set by dispatch)
}

// parseEvents decodes a buffer filled by read(2) on the group fd. It calls
// fn for every event, including malformed ones whose fd it could read (with
// bad set), so that each one is still answered and its fd closed.
func parseEvents(buf []byte, fn func(ev event, bad error)) error {
	le := binary.NativeEndian
	for len(buf) > 0 {
		if len(buf) < metadataLen {
			return fmt.Errorf("fanotify: %d trailing bytes, shorter than an event", len(buf))
		}
		evLen := int(le.Uint32(buf[0:4]))
		vers := buf[4]
		mdLen := int(le.Uint16(buf[6:8]))
		if evLen < metadataLen || evLen > len(buf) {
			return fmt.Errorf("fanotify: event length %d with %d bytes left", evLen, len(buf))
		}
		ev := event{
			mask: le.Uint64(buf[8:16]),
			fd:   int(int32(le.Uint32(buf[16:20]))),
			pid:  int32(le.Uint32(buf[20:24])),
		}
		var bad error
		switch {
		case vers != metadataVers:
			bad = fmt.Errorf("fanotify: metadata version %d, want %d", vers, metadataVers)
		case mdLen < metadataLen || mdLen > evLen:
			bad = fmt.Errorf("fanotify: metadata length %d in an event of %d", mdLen, evLen)
		default:
			bad = parseInfo(buf[mdLen:evLen], &ev)
		}
		fn(ev, bad)
		buf = buf[evLen:]
	}
	return nil
}

// parseInfo reads the info records that follow the metadata of one event.
func parseInfo(info []byte, ev *event) error {
	le := binary.NativeEndian
	for len(info) > 0 {
		if len(info) < 4 {
			return fmt.Errorf("fanotify: %d trailing info bytes", len(info))
		}
		typ, l := info[0], int(le.Uint16(info[2:4]))
		if l < 4 || l > len(info) {
			return fmt.Errorf("fanotify: info record length %d with %d bytes left", l, len(info))
		}
		if typ == unix.FAN_EVENT_INFO_TYPE_RANGE {
			if l < rangeInfoLen {
				return fmt.Errorf("fanotify: range record of %d bytes, want %d", l, rangeInfoLen)
			}
			off, count := le.Uint64(info[8:16]), le.Uint64(info[16:24])
			if off > 1<<62 || count > 1<<62 {
				return fmt.Errorf("fanotify: range offset %d count %d out of bounds", off, count)
			}
			ev.hasRange, ev.off, ev.count = true, int64(off), int64(count)
		}
		info = info[l:]
	}
	return nil
}

// group is an open fanotify group.
type group struct {
	fd   int      // the group fd; valid until close
	file *os.File // the same fd, registered with the runtime poller, for read
	mask uint64   // the event mask of every mark

	// fdMu orders the creation of event fds (by read) against answers
	// given after the event fd is closed: while it is held for an answer,
	// no read can hand out the closed fd's number to a new event, so the
	// answer reaches the right event.
	fdMu sync.Mutex
}

// openGroup creates a pre-content group whose event fds are opened
// O_RDWR|O_LARGEFILE, so fills can be written through them.
func openGroup(mask uint64) (*group, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_PRE_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|
		unix.FAN_UNLIMITED_QUEUE|unix.FAN_UNLIMITED_MARKS,
		unix.O_RDWR|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	return &group{fd: fd, file: os.NewFile(uintptr(fd), "fanotify"), mask: mask}, nil
}

// groupFromFD wraps an existing group fd (received from a holder).
func groupFromFD(fd int, mask uint64) (*group, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("fanotify group from holder: %w", err)
	}
	return &group{fd: fd, file: os.NewFile(uintptr(fd), "fanotify"), mask: mask}, nil
}

// respondOrphan answers an event read by another process, by the number
// its fd had there. Unknown numbers give ENOENT.
func (g *group) respondOrphan(fd int, errno unix.Errno) error {
	g.fdMu.Lock()
	defer g.fdMu.Unlock()
	return writeResponse(g.fd, fd, errno)
}

// mark adds an inode mark on path (symlinks not followed).
func (g *group) mark(path string) error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_ADD|unix.FAN_MARK_DONT_FOLLOW, g.mask, unix.AT_FDCWD, path)
}

// unmark removes the inode mark of path.
func (g *group) unmark(path string) error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_REMOVE|unix.FAN_MARK_DONT_FOLLOW, g.mask, unix.AT_FDCWD, path)
}

// unmarkFD removes the inode mark of the file open at fd.
func (g *group) unmarkFD(fd int) error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_REMOVE, g.mask, fd, "")
}

// flush removes every inode mark of the group.
func (g *group) flush() error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_FLUSH, 0, unix.AT_FDCWD, "")
}

// read blocks until events are available, or until stopRead is called.
func (g *group) read(buf []byte) (int, error) {
	rc, err := g.file.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		g.fdMu.Lock()
		n, rerr = unix.Read(int(fd), buf)
		g.fdMu.Unlock()
		return !errors.Is(rerr, unix.EAGAIN)
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// stopRead makes a blocked read return os.ErrDeadlineExceeded.
func (g *group) stopRead() error { return g.file.SetReadDeadline(time.Now()) }

// readNow reads what is queued without waiting; 0 when nothing is.
func (g *group) readNow(buf []byte) (int, error) {
	g.fdMu.Lock()
	n, err := unix.Read(g.fd, buf)
	g.fdMu.Unlock()
	if errors.Is(err, unix.EAGAIN) {
		return 0, nil
	}
	return n, err
}

// closeAndRespond closes the event fd, then answers its event (errno 0
// allows), then calls answered (unless the answer failed). Closing first
// matters: the event fd is open for writing, and a program held at exec
// must not find a writer when it resumes (ETXTBSY). No read can hand the
// fd's number to a new event before answered returns.
func (g *group) closeAndRespond(fd int, errno unix.Errno, answered func()) error {
	g.fdMu.Lock()
	defer g.fdMu.Unlock()
	unix.Close(fd)
	if err := writeResponse(g.fd, fd, errno); err != nil {
		return err
	}
	answered()
	return nil
}

func writeResponse(groupFD, fd int, errno unix.Errno) error {
	resp := uint32(unix.FAN_ALLOW)
	if errno != 0 {
		resp = unix.FAN_DENY | uint32(errno&unix.FAN_ERRNO_MASK)<<unix.FAN_ERRNO_SHIFT
	}
	var b [8]byte
	binary.NativeEndian.PutUint32(b[0:4], uint32(int32(fd)))
	binary.NativeEndian.PutUint32(b[4:8], resp)
	n, err := unix.Write(groupFD, b[:])
	if err != nil {
		return fmt.Errorf("fanotify response for fd %d: %w", fd, err)
	}
	if n != len(b) {
		return fmt.Errorf("fanotify response for fd %d: short write %d", fd, n)
	}
	return nil
}

func (g *group) close() error { return g.file.Close() }
