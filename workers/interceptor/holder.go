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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The holder keeps a dup of the fanotify group fd in a second process, so
// that the group — its marks and the programs it holds — outlives the
// daemon, whether it crashed or stopped cleanly (see README.md). It never
// opens a file: it cannot block on a stub.
//
// Protocol: a SOCK_SEQPACKET unix socket; one message per request, one per
// reply, plain words:
//
//	get   → "fd" with the group fd attached (SCM_RIGHTS), or "none"
//	put   (fd attached) → "ok", or "err …" if it already holds a group
//	grace D → "ok": how long programs wait for a daemon once none holds a
//	        session (a Go duration; negative: not at all)
//	park  → "ok": the daemon stops; the holder keeps the group, its marks
//	        and the events still queued, as after a crash
//	drop  → "ok"; the holder closes its dup and HolderMain returns
//	pid   → "pid N"
//	state → "state S since=UNIX denied=N grace=D" (S: session, waiting,
//	        denying, empty)
//
// The connection that did get or put is the session: the holder serves one
// session at a time ("busy" to others for get, put, park and drop). When
// the session ends without drop — a park, or the daemon died — programs
// touching stubs stay blocked for the grace (a restarted daemon answers
// them with their bytes); after it the holder answers every event itself,
// denying with EIO, until a daemon takes the group again. Only peers with
// the holder's own uid are served.

// DefaultHolderGrace is how long programs that touch a stub wait, once no
// daemon runs, before the holder denies them with EIO.
const DefaultHolderGrace = 30 * time.Second

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
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o700); err != nil { // a holder unit may start before any daemon
		return fmt.Errorf("interceptor holder: %w", err)
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
	h := &holder{log: logger, fd: -1, dropped: make(chan struct{}), replied: make(chan struct{}), grace: DefaultHolderGrace, since: time.Now()}
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
	h.stopDenying()
	fd := h.fd
	h.fd = -1
	h.mu.Unlock()
	select {
	case <-h.dropped:
		select { // let the peer have its "ok" before the process ends
		case <-h.replied:
		case <-time.After(time.Second):
		}
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
	replied chan struct{} // closed once the drop's "ok" is written
	once    sync.Once
	denied  atomic.Uint64 // events the holder answered with EIO

	mu      sync.Mutex
	fd      int // the group fd, -1 if none
	session *net.UnixConn
	grace   time.Duration // negative: deny as soon as no session holds the group
	since   time.Time     // of the current state
	away    *time.Timer   // starts denying once the grace is over
	deny    *denier       // non-nil while the holder answers events
}

func (h *holder) serve(c *net.UnixConn) {
	defer func() {
		h.mu.Lock()
		if h.session == c {
			h.session = nil
			if h.fd >= 0 {
				h.log.Warn("interceptor daemon gone without drop; keeping the fanotify group for the next one", "grace", h.grace)
				h.leftAlone()
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
		_, _, werr := c.WriteMsgUnix([]byte(reply), roob, nil)
		if reply == "ok" && string(buf[:n]) == "drop" {
			close(h.replied)
			return
		}
		if werr != nil {
			return
		}
	}
}

func (h *holder) handle(c *net.UnixConn, msg string, fds []int) (string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cmd, arg, _ := strings.Cut(msg, " ")
	// Any fd sent with a command other than put is closed at once.
	if cmd != "put" {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	switch cmd {
	case "pid":
		return "pid " + strconv.Itoa(os.Getpid()), -1
	case "state":
		return fmt.Sprintf("state %s since=%d denied=%d grace=%s", h.state(), h.since.Unix(), h.denied.Load(), h.grace), -1
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
		h.takeBack(c)
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
		h.takeBack(c)
		h.fd = fds[0]
		h.log.Info("interceptor holder keeps the fanotify group")
		return "ok", -1
	case "grace":
		d, err := time.ParseDuration(arg)
		if err != nil {
			return "err " + err.Error(), -1
		}
		h.grace = d
		return "ok", -1
	case "park":
		if h.session != c || h.fd < 0 {
			return "err no group of this session to park", -1
		}
		h.session = nil
		h.log.Info("interceptor daemon stopped; the holder keeps the fanotify group and its marks", "grace", h.grace)
		h.leftAlone()
		return "ok", -1
	case "drop":
		h.stopDenying()
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

// state names what the holder does now. h.mu is held.
func (h *holder) state() string {
	switch {
	case h.session != nil:
		return "session"
	case h.fd < 0:
		return "empty"
	case h.deny != nil:
		return "denying"
	}
	return "waiting"
}

// takeBack makes c the session: the holder stops answering events. h.mu
// is held.
func (h *holder) takeBack(c *net.UnixConn) {
	if h.away != nil {
		h.away.Stop()
		h.away = nil
	}
	h.stopDenying()
	if h.session != c {
		h.since = time.Now()
	}
	h.session = c
}

// leftAlone starts the grace after the session ended, with the group
// held. h.mu is held.
func (h *holder) leftAlone() {
	h.since = time.Now()
	if h.away != nil {
		h.away.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(max(h.grace, 0), func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.away != t || h.session != nil || h.fd < 0 || h.deny != nil {
			return // a daemon came back, or a drop
		}
		h.away = nil
		h.since = time.Now()
		h.deny = startDenier(h.fd, &h.denied, h.log)
	})
	h.away = t
}

// stopDenying stops the denier, if one runs, once it has answered every
// event it read. h.mu is held.
func (h *holder) stopDenying() {
	if h.deny != nil {
		h.deny.stop()
		h.deny = nil
	}
}

// denier answers every event of the group with EIO while no daemon runs.
type denier struct {
	quit chan struct{}
	done chan struct{}
}

func (d *denier) stop() {
	close(d.quit)
	<-d.done
}

// startDenier answers, first, every event a dead daemon had read and left
// unanswered (a reply by fd number releases them; see recover.go), then
// every new event, with EIO. It reads the group without blocking (poll)
// so that stop returns within one poll interval.
func startDenier(groupFD int, denied *atomic.Uint64, log *slog.Logger) *denier {
	d := &denier{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		swept := 0
		for n := range journalEventSlots {
			for writeResponse(groupFD, n, unix.EIO) == nil {
				swept++
				denied.Add(1)
			}
		}
		log.Warn("no daemon took the fanotify group back within the grace: programs touching stubs now get EIO until one does",
			"orphaned_events_denied", swept)
		buf := make([]byte, readBufSize)
		lastLog, sinceLog := time.Now(), 0
		for {
			select {
			case <-d.quit:
				return
			default:
			}
			pfd := []unix.PollFd{{Fd: int32(groupFD), Events: unix.POLLIN}}
			if n, err := unix.Poll(pfd, 200); err != nil || n == 0 {
				continue
			}
			n, err := unix.Read(groupFD, buf)
			if err != nil || n <= 0 {
				continue
			}
			parseEvents(buf[:n], func(ev event, _ error) {
				if ev.fd < 0 {
					return
				}
				path := fdPath(ev.fd)
				// Close first, as closeAndRespond does: a program held at
				// exec must not find a writer when it resumes.
				unix.Close(ev.fd)
				// Counted before the answer: the program it releases may
				// be done, and the count asked for, before this goroutine
				// runs again.
				denied.Add(1)
				if err := writeResponse(groupFD, ev.fd, unix.EIO); err != nil {
					denied.Add(^uint64(0))
					log.Error("deny an event while no daemon runs", "path", path, "err", err)
					return
				}
				if sinceLog++; sinceLog <= 10 || time.Since(lastLog) > 10*time.Second {
					log.Warn("denied a program access to a stub: no daemon runs", "path", path, "pid", ev.pid, "denied_total", denied.Load())
					if time.Since(lastLog) > 10*time.Second {
						lastLog, sinceLog = time.Now(), 1
					}
				}
			})
		}
	}()
	return d
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

// grace tells the holder how long programs wait for a daemon once this
// session ends.
func (h *holderConn) grace(d time.Duration) error {
	_, _, err := h.call("grace "+d.String(), -1)
	return err
}

// park ends the session and leaves the group, its marks and its queued
// events with the holder.
func (h *holderConn) park() error {
	_, _, err := h.call("park", -1)
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

// HolderState is what a holder reports about itself.
type HolderState struct {
	PID int `json:"pid"`
	// State: "session" (a daemon holds the group), "waiting" (no daemon;
	// programs touching stubs wait for one, up to Grace), "denying" (no
	// daemon; they get EIO), "empty" (no group held).
	State  string        `json:"state"`
	Since  time.Time     `json:"since"`
	Denied uint64        `json:"denied"` // events answered with EIO since the holder started
	Grace  time.Duration `json:"grace"`
}

// QueryHolder asks the holder on socketPath what it does.
func QueryHolder(socketPath string) (HolderState, error) {
	var st HolderState
	h, err := dialHolder(socketPath)
	if err != nil {
		return st, fmt.Errorf("holder state: %w", err)
	}
	defer h.close()
	reply, _, err := h.call("pid", -1)
	if err != nil {
		return st, err
	}
	if st.PID, err = strconv.Atoi(strings.TrimPrefix(reply, "pid ")); err != nil {
		return st, fmt.Errorf("holder pid: reply %q: %w", reply, err)
	}
	if reply, _, err = h.call("state", -1); err != nil {
		return st, err
	}
	var since int64
	var grace string
	if _, err := fmt.Sscanf(reply, "state %s since=%d denied=%d grace=%s", &st.State, &since, &st.Denied, &grace); err != nil {
		return st, fmt.Errorf("holder state: reply %q: %w", reply, err)
	}
	st.Since = time.Unix(since, 0)
	if st.Grace, err = time.ParseDuration(grace); err != nil {
		return st, fmt.Errorf("holder state: reply %q: %w", reply, err)
	}
	return st, nil
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

// holderLogMax is the size past which the holder's log is set aside
// (holder.log.old) when a holder starts.
const holderLogMax = 16 << 20

// openHolderLog opens the log of a holder this daemon starts.
func openHolderLog(path string) (*os.File, error) {
	if st, err := os.Stat(path); err == nil && st.Size() > holderLogMax {
		os.Rename(path, path+".old")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("holder log: %w", err)
	}
	return f, nil
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
	// Its log goes to a file beside the socket: it outlives this process,
	// and must not keep this one's stdout or stderr (a pipe a supervisor
	// or a shell waits on) open after it is gone.
	logf, err := openHolderLog(filepath.Join(filepath.Dir(path), "holder.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: no terminal signal and no process-group kill aimed
	// at the daemon reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start holder %s: %w", argv[0], err)
	}
	logger.Info("started interceptor holder", "pid", cmd.Process.Pid, "socket", path, "log", logf.Name())
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
