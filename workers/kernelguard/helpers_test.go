//go:build linux

package kernelguard

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// makeStub writes size random bytes to path and punches its data out (the
// whole file, rounded up to the block size), the way Strata releases a
// file. It returns the original bytes. Registering it (AddStub) is up to
// the caller.
func makeStub(t testing.TB, path string, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	bs := int64(st.Blksize)
	punch := (int64(size) + bs - 1) / bs * bs
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, punch); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 0 || st.Size != int64(size) {
		t.Fatalf("stub %s: %d blocks, size %d; want 0 blocks, size %d", path, st.Blocks, st.Size, size)
	}
	return data
}

// makeResident writes size random bytes to path (no marker) and returns them.
func makeResident(t testing.TB, path string, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// fanGroup is a tiny HSM daemon: a fanotify pre-content group with a
// FAN_PRE_ACCESS inode mark on each stub, whose goroutine fills a stub with
// its original bytes through the event's fd and then allows the access.
type fanGroup struct {
	t      testing.TB
	fd     int
	mu     sync.Mutex
	data   map[uint64][]byte // by inode number
	done   chan struct{}
	closed bool
}

const fanPreAccess = 0x00100000 // FAN_PRE_ACCESS, Linux 6.14

func newFanGroup(t testing.TB) *fanGroup {
	t.Helper()
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_PRE_CONTENT|unix.FAN_CLOEXEC|unix.FAN_UNLIMITED_QUEUE|unix.FAN_UNLIMITED_MARKS, unix.O_RDWR|unix.O_LARGEFILE)
	if err != nil {
		t.Fatalf("fanotify_init: %v", err)
	}
	g := &fanGroup{t: t, fd: fd, data: map[uint64][]byte{}, done: make(chan struct{})}
	go g.serve()
	t.Cleanup(g.Close)
	return g
}

// Guard puts a FAN_PRE_ACCESS mark on path, whose original bytes are data.
func (g *fanGroup) Guard(path string, data []byte) {
	g.t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		g.t.Fatal(err)
	}
	g.mu.Lock()
	g.data[st.Ino] = data
	g.mu.Unlock()
	if err := unix.FanotifyMark(g.fd, unix.FAN_MARK_ADD, fanPreAccess, unix.AT_FDCWD, path); err != nil {
		g.t.Fatalf("fanotify_mark %s: %v", path, err)
	}
}

// Close closes the group: the kernel destroys its marks and allows every
// event still pending.
func (g *fanGroup) Close() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	g.mu.Unlock()
	unix.Close(g.fd)
	<-g.done
}

func (g *fanGroup) serve() {
	defer close(g.done)
	buf := make([]byte, 64<<10)
	for {
		var pfd = []unix.PollFd{{Fd: int32(g.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 100); err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		g.mu.Lock()
		closed := g.closed
		g.mu.Unlock()
		if closed {
			return
		}
		if pfd[0].Revents&unix.POLLIN == 0 {
			continue
		}
		n, err := unix.Read(g.fd, buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for off := 0; off+int(unsafe.Sizeof(unix.FanotifyEventMetadata{})) <= n; {
			m := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[off]))
			off += int(m.Event_len)
			if m.Fd < 0 {
				continue
			}
			g.fill(int(m.Fd))
			resp := unix.FanotifyResponse{Fd: m.Fd, Response: unix.FAN_ALLOW}
			unix.Write(g.fd, (*[unsafe.Sizeof(resp)]byte)(unsafe.Pointer(&resp))[:])
			unix.Close(int(m.Fd))
		}
	}
}

func (g *fanGroup) fill(fd int) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return
	}
	g.mu.Lock()
	data := g.data[st.Ino]
	g.mu.Unlock()
	if data != nil {
		unix.Pwrite(fd, data, 0)
	}
}

func isZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// punch punches the whole of path back to a hole (the test's fill made it
// data).
func punch(t testing.TB, path string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	bs := int64(st.Blksize)
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, (st.Size+bs-1)/bs*bs); err != nil {
		t.Fatal(err)
	}
}

func randomSuffix(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}
