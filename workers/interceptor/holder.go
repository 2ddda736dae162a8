//go:build linux

package interceptor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The holder keeps a dup of the fanotify group fd in a second process, so
// that the group — its marks and the programs it holds — outlives a crash
// of the daemon (see README.md). It never reads the group, never opens a
// file: it cannot block on a stub.
//
// Protocol: a SOCK_SEQPACKET unix socket; one message per request, one per
// reply, plain words:
//
//	get   → "fd" with the group fd attached (SCM_RIGHTS), or "none"
//	put   (fd attached) → "ok", or "err …" if it already holds a group
//	drop  → "ok"; the holder closes its dup and HolderMain returns
//	pid   → "pid N"
//
// The connection that did get or put is the session: the holder serves one
// session at a time ("busy" to others for get, put and drop), and when the
// session's connection closes without drop (the daemon died) it keeps the
// fd for the next one. Only peers with the holder's own uid are served.

// HolderMain is the body of the holder process: it listens on socketPath
// and returns nil after a drop, or when ctx is done. When it returns
// without a drop while it holds a group no daemon uses, the group closes:
// pending events are allowed and stubs read as zeros. It refuses to start
// if another holder answers on socketPath.
func HolderMain(ctx context.Context, socketPath string, logger *slog.Logger) error {
	if logger == nil {
		return errors.New("interceptor holder: nil logger")
	}
	if c, err := net.Dial("unixpacket", socketPath); err == nil {
		c.Close()
		return fmt.Errorf("interceptor holder: another holder listens on %s", socketPath)
	}
	os.Remove(socketPath) // a stale socket of a dead holder
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socketPath, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("interceptor holder: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(socketPath, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("interceptor holder: %w", err)
	}
	h := &holder{log: logger, fd: -1, dropped: make(chan struct{})}
	logger.Info("interceptor holder listening", "socket", socketPath, "pid", os.Getpid())
	go func() {
		select {
		case <-ctx.Done():
		case <-h.dropped:
		}
		ln.Close()
	}()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			break
		}
		go h.serve(c)
	}
	h.mu.Lock()
	fd := h.fd
	h.fd = -1
	h.mu.Unlock()
	select {
	case <-h.dropped:
		return nil
	default:
	}
	if fd >= 0 {
		logger.Warn("interceptor holder stopping while it holds the fanotify group; if no daemon holds it, stubs now read as zeros")
		unix.Close(fd)
	}
	return ctx.Err()
}

type holder struct {
	log     *slog.Logger
	dropped chan struct{}
	once    sync.Once

	mu      sync.Mutex
	fd      int // the group fd, -1 if none
	session *net.UnixConn
}

func (h *holder) serve(c *net.UnixConn) {
	defer func() {
		h.mu.Lock()
		if h.session == c {
			h.session = nil
			if h.fd >= 0 {
				h.log.Warn("interceptor daemon gone without drop; keeping the fanotify group for the next one")
			}
		}
		h.mu.Unlock()
		c.Close()
	}()
	if err := checkPeer(c); err != nil {
		h.log.Warn("interceptor holder refused a peer", "err", err)
		return
	}
	buf := make([]byte, 64)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return
		}
		var fds []int
		if oobn > 0 {
			fds, _ = parseRights(oob[:oobn])
		}
		reply, replyFD := h.handle(c, string(buf[:n]), fds)
		var roob []byte
		if replyFD >= 0 {
			roob = unix.UnixRights(replyFD)
		}
		if _, _, err := c.WriteMsgUnix([]byte(reply), roob, nil); err != nil {
			return
		}
		if reply == "ok" && string(buf[:n]) == "drop" {
			return
		}
	}
}

func (h *holder) handle(c *net.UnixConn, cmd string, fds []int) (string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Any fd sent with a command other than put is closed at once.
	if cmd != "put" {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	if cmd == "pid" {
		return "pid " + strconv.Itoa(os.Getpid()), -1
	}
	if h.session != nil && h.session != c {
		if cmd == "put" {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
		return "busy", -1
	}
	switch cmd {
	case "get":
		h.session = c
		if h.fd < 0 {
			return "none", -1
		}
		return "fd", h.fd
	case "put":
		if len(fds) != 1 || h.fd >= 0 {
			for _, fd := range fds {
				unix.Close(fd)
			}
			if h.fd >= 0 {
				return "err already holding a group", -1
			}
			return "err want exactly one fd", -1
		}
		if err := checkGroupFD(fds[0]); err != nil {
			unix.Close(fds[0])
			return "err " + err.Error(), -1
		}
		h.session = c
		h.fd = fds[0]
		h.log.Info("interceptor holder keeps the fanotify group")
		return "ok", -1
	case "drop":
		if h.fd >= 0 {
			unix.Close(h.fd)
			h.fd = -1
		}
		h.once.Do(func() { close(h.dropped) })
		h.log.Info("interceptor holder dropped the fanotify group")
		return "ok", -1
	}
	return "err unknown command", -1
}

func checkPeer(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("peer uid %d, want %d", cred.Uid, os.Geteuid())
	}
	return nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		f, err := unix.ParseUnixRights(&m)
		if err == nil {
			fds = append(fds, f...)
		}
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	return fds, nil
}

// checkGroupFD reports an error unless fd is a fanotify group.
func checkGroupFD(fd int) error {
	l, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return err
	}
	if l != "anon_inode:[fanotify]" {
		return fmt.Errorf("fd is %s, not a fanotify group", l)
	}
	return nil
}

// holderConn is the daemon's session with its holder.
type holderConn struct {
	c *net.UnixConn
}

func dialHolder(path string) (*holderConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	return &holderConn{c: c}, nil
}

func (h *holderConn) call(cmd string, fd int) (string, []int, error) {
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	h.c.SetDeadline(time.Now().Add(10 * time.Second))
	defer h.c.SetDeadline(time.Time{})
	if _, _, err := h.c.WriteMsgUnix([]byte(cmd), oob, nil); err != nil {
		return "", nil, fmt.Errorf("holder %s: %w", cmd, err)
	}
	buf := make([]byte, 256)
	roob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := h.c.ReadMsgUnix(buf, roob)
	if err != nil {
		return "", nil, fmt.Errorf("holder %s: %w", cmd, err)
	}
	var fds []int
	if oobn > 0 {
		fds, _ = parseRights(roob[:oobn])
	}
	reply := string(buf[:n])
	if strings.HasPrefix(reply, "err ") || reply == "busy" {
		for _, f := range fds {
			unix.Close(f)
		}
		return "", nil, fmt.Errorf("holder %s: %s", cmd, reply)
	}
	return reply, fds, nil
}

// get returns the held group fd, or -1 if the holder holds none.
func (h *holderConn) get() (int, error) {
	reply, fds, err := h.call("get", -1)
	if err != nil {
		return -1, err
	}
	if reply == "none" {
		return -1, nil
	}
	if reply != "fd" || len(fds) != 1 {
		for _, f := range fds {
			unix.Close(f)
		}
		return -1, fmt.Errorf("holder get: unexpected reply %q with %d fds", reply, len(fds))
	}
	if err := checkGroupFD(fds[0]); err != nil {
		unix.Close(fds[0])
		return -1, fmt.Errorf("holder get: %w", err)
	}
	return fds[0], nil
}

func (h *holderConn) put(fd int) error {
	_, _, err := h.call("put", fd)
	return err
}

func (h *holderConn) drop() error {
	_, _, err := h.call("drop", -1)
	return err
}

func (h *holderConn) close() {
	if h != nil {
		h.c.Close()
	}
}

// HolderPID asks the holder on socketPath for its pid (for tests and
// `strata doctor`).
func HolderPID(socketPath string) (int, error) {
	h, err := dialHolder(socketPath)
	if err != nil {
		return 0, fmt.Errorf("holder pid: %w", err)
	}
	defer h.close()
	reply, _, err := h.call("pid", -1)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimPrefix(reply, "pid "))
	if err != nil {
		return 0, fmt.Errorf("holder pid: reply %q: %w", reply, err)
	}
	return pid, nil
}

// StopHolder tells the holder on socketPath to close its group and exit.
// It is refused ("busy") while a daemon holds a session.
func StopHolder(socketPath string) error {
	h, err := dialHolder(socketPath)
	if err != nil {
		return fmt.Errorf("stop holder: %w", err)
	}
	defer h.close()
	return h.drop()
}

// connectHolder dials the holder, starting one with argv if none listens.
func connectHolder(path string, argv []string, logger *slog.Logger) (*holderConn, error) {
	if h, err := dialHolder(path); err == nil {
		return h, nil
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("no holder on %s and no HolderCommand to start one", path)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Stderr = os.Stderr
	// Its own session: no terminal signal and no process-group kill aimed
	// at the daemon reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start holder %s: %w", argv[0], err)
	}
	logger.Info("started interceptor holder", "pid", cmd.Process.Pid, "socket", path)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if it exits while we live
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, err := dialHolder(path)
		if err == nil {
			return h, nil
		}
		select {
		case werr := <-exited:
			if werr == nil {
				werr = errors.New("exit status 0")
			}
			return nil, fmt.Errorf("holder %s exited at start: %w", argv[0], werr)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("holder did not listen on %s within 10s: %w", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
