//go:build linux

package modwatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// This file is the seam to the kernel: every fanotify call of the watcher.

const (
	metadataLen  = unix.FAN_EVENT_METADATA_LEN
	metadataVers = 3 // FANOTIFY_METADATA_VERSION
	readBufSize  = 64 << 10

	// markMask is what a watched file reports: a write (FAN_MODIFY, also
	// raised by truncate and fallocate) and the close of a fd open for
	// writing (FAN_CLOSE_WRITE, for writes through a mapping).
	markMask = unix.FAN_MODIFY | unix.FAN_CLOSE_WRITE
)

// event is one decoded notification.
type event struct {
	mask uint64
	fd   int // FAN_NOFD (-1) for an overflow
	pid  int32
}

// parseEvents decodes a buffer filled by read(2) and calls fn for each
// event; every fd it reports must be closed by fn.
func parseEvents(buf []byte, fn func(event)) error {
	le := binary.NativeEndian
	for len(buf) > 0 {
		if len(buf) < metadataLen {
			return fmt.Errorf("fanotify: %d trailing bytes, shorter than an event", len(buf))
		}
		evLen := int(le.Uint32(buf[0:4]))
		if evLen < metadataLen || evLen > len(buf) {
			return fmt.Errorf("fanotify: event length %d with %d bytes left", evLen, len(buf))
		}
		ev := event{mask: le.Uint64(buf[8:16]), fd: int(int32(le.Uint32(buf[16:20]))), pid: int32(le.Uint32(buf[20:24]))}
		if vers := buf[4]; vers != metadataVers {
			if ev.fd >= 0 {
				unix.Close(ev.fd)
			}
			return fmt.Errorf("fanotify: metadata version %d, want %d", vers, metadataVers)
		}
		fn(ev)
		buf = buf[evLen:]
	}
	return nil
}

// group is an open notification group.
type group struct {
	fd   int
	file *os.File // the same fd, registered with the runtime poller
}

// openGroup creates a notification group (no permission events: nobody
// ever waits for it) whose event fds are read-only.
func openGroup() (*group, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|unix.FAN_UNLIMITED_MARKS,
		unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	return &group{fd: fd, file: os.NewFile(uintptr(fd), "fanotify-modwatch")}, nil
}

// mark adds an inode mark on path (symlinks not followed). A path lookup,
// not an open: it raises no event on a stub.
func (g *group) mark(path string) error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_ADD|unix.FAN_MARK_DONT_FOLLOW, markMask, unix.AT_FDCWD, path)
}

// unmark removes the inode mark of path.
func (g *group) unmark(path string) error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_REMOVE|unix.FAN_MARK_DONT_FOLLOW, markMask, unix.AT_FDCWD, path)
}

// unmarkFD removes the inode mark of the file open at fd.
func (g *group) unmarkFD(fd int) error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_REMOVE, markMask, fd, "")
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
		n, rerr = unix.Read(int(fd), buf)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// stopRead makes a blocked read return os.ErrDeadlineExceeded.
func (g *group) stopRead() error { return g.file.SetReadDeadline(time.Now()) }

func (g *group) close() error { return g.file.Close() }
