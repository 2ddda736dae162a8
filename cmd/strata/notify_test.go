package main

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// notifySocket is a unix datagram socket standing in for systemd's
// NOTIFY_SOCKET: every datagram arrives on msgs as its assignments.
type notifySocket struct {
	path string
	msgs chan []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdn") // short: a socket path has 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ns := &notifySocket{path: filepath.Join(dir, "notify"), msgs: make(chan []string, 1024)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			ns.msgs <- strings.Split(string(buf[:n]), "\n")
		}
	}()
	return ns
}

// until reads datagrams until one holds want (e.g. "READY=1"), calling
// each(msg) on every one read, that one included; it fails after d.
func (ns *notifySocket) until(t *testing.T, d time.Duration, want string, each func(msg []string)) []string {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case m := <-ns.msgs:
			if each != nil {
				each(m)
			}
			for _, a := range m {
				if a == want {
					return m
				}
			}
		case <-timeout:
			t.Fatalf("no %s on NOTIFY_SOCKET within %s", want, d)
			return nil
		}
	}
}

// unitHardening reads a unit's CapabilityBoundingSet and NoNewPrivileges
// and returns the setpriv(1) arguments that give a root process the same
// bounds: only those capabilities, none inheritable, no new privileges.
func unitHardening(t *testing.T, unit string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "dist", "systemd", unit))
	if err != nil {
		t.Fatal(err)
	}
	var caps []string
	nnp := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "CapabilityBoundingSet="); ok {
			for _, c := range strings.Fields(v) {
				caps = append(caps, "+"+strings.TrimPrefix(strings.ToLower(c), "cap_"))
			}
		}
		if line == "NoNewPrivileges=yes" {
			nnp = true
		}
	}
	if len(caps) == 0 || !nnp {
		t.Fatalf("%s: no CapabilityBoundingSet (%v) or no NoNewPrivileges=yes (%v)", unit, caps, nnp)
	}
	args := []string{"--bounding-set", "-all," + strings.Join(caps, ","), "--inh-caps", "-all", "--no-new-privs", "--"}
	return args
}

// hardenedProc is a strata process started through setpriv with the
// bounds of its unit and the environment systemd would give it.
type hardenedProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startHardened(t *testing.T, setpriv, unit string, env []string, args ...string) *hardenedProc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "proc-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(setpriv, append(unitHardening(t, unit), args...)...)
	cmd.Env = append(strataEnv(""), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	p := &hardenedProc{cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("log of %s (%v):\n%s", unit, args, p.logs())
		}
	})
	return p
}

func (p *hardenedProc) logs() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// TestNotify runs the holder and the daemon as their units do — through
// setpriv with each unit's CapabilityBoundingSet and NoNewPrivileges, with
// NOTIFY_SOCKET and WATCHDOG_USEC pointing at sockets this test listens
// on — and does real work with them: the holder says READY=1 once it
// answers on its socket; the daemon says READY=1 only when /readyz already
// answers ready and, on a second start over stubs, once every stub is
// marked (the scrape then counts them, and its STATUS says how many); it
// sends WATCHDOG=1 at half the interval, archives and releases (holes and
// xattrs with the unit's capabilities), says STOPPING=1 on SIGTERM and
// parks the group with the holder; the second daemon recalls every stub
// with the right bytes.
func TestNotify(t *testing.T) {
	stratatest.NeedRoot(t)
	setpriv := stratatest.NeedTool(t, "setpriv")
	bin := buildStrata(t)
	hot := stratatest.LoopMount(t, "ext4", 100<<20)
	data, cold := t.TempDir(), t.TempDir()
	t.Cleanup(func() { stopHolderOf(t, data) })

	// The holder, as strata-holder.service runs it.
	hn := listenNotify(t)
	holder := startHardened(t, setpriv, "strata-holder.service", []string{"NOTIFY_SOCKET=" + hn.path},
		bin, "interceptor-holder", "--socket", holderSocket(data))
	hn.until(t, 20*time.Second, "READY=1", nil)
	st, err := interceptor.QueryHolder(holderSocket(data))
	if err != nil || st.PID != holder.cmd.Process.Pid {
		t.Fatalf("holder said READY=1 but does not answer as itself on its socket: %+v %v", st, err)
	}

	files := map[string][]byte{}
	rnd := rand.New(rand.NewPCG(3, 9))
	for i, n := range []int{2<<20 + 5, 300 << 10, 1 << 20} {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rnd.Uint32())
		}
		p := filepath.Join(hot, fmt.Sprintf("n%d.bin", i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files[p] = b
	}
	cfg := filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `data_dir = %q
[[hot]]
path = %q
[[tier]]
name = "cold"
kind = "directory"
path = %q
require_mount = false
`, data, hot, cold), 0o600); err != nil {
		t.Fatal(err)
	}
	runArgs := []string{bin, "run", "--config", cfg, "--port", "-2", "--metrics", "127.0.0.1:0"}

	// waitReady: READY=1 arrives, and by then /readyz says ready and
	// marks are what wantMarks says.
	waitReady := func(ns *notifySocket, p *hardenedProc, wantMarks int) []string {
		t.Helper()
		var before []string
		ready := ns.until(t, 90*time.Second, "READY=1", func(m []string) { before = append(before, m...) })
		if _, err := os.Stat(filepath.Join(data, daemonInfoFile)); err != nil {
			t.Fatalf("READY=1 arrived before the daemon answers its CLI: %v", err)
		}
		addr := metricsAddr(t, data)
		if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
			t.Fatalf("READY=1 arrived while /readyz answers %d %q", code, body)
		}
		s := scrapeMetrics(t, addr)
		if got := s.get("strata_stubs_marked"); got != float64(wantMarks) {
			t.Fatalf("READY=1 arrived with %g stubs marked, want %d (every stub)", got, wantMarks)
		}
		if want := fmt.Sprintf("STATUS=ready: %d stubs marked", wantMarks); !strings.Contains(strings.Join(ready, "\n"), want) {
			t.Errorf("READY=1 came with %q, want %s", ready, want)
		}
		return before
	}
	// stop: SIGTERM → STOPPING=1, then a clean exit.
	stop := func(ns *notifySocket, p *hardenedProc) {
		t.Helper()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		ns.until(t, 30*time.Second, "STOPPING=1", nil)
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("daemon still running 60s after SIGTERM")
		}
		if !p.cmd.ProcessState.Success() {
			t.Fatalf("daemon exited %v after SIGTERM", p.cmd.ProcessState)
		}
	}

	// First start: no stubs yet. Archive and release under the unit's
	// capabilities.
	n1 := listenNotify(t)
	d1 := startHardened(t, setpriv, "strata.service", []string{"NOTIFY_SOCKET=" + n1.path, "WATCHDOG_USEC=1000000"}, runArgs...)
	waitReady(n1, d1, 0)
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive under the unit's capabilities: %+v", sum)
	}
	for p := range files {
		var fst unix.Stat_t
		// A stub keeps at most its xattr block.
		if err := unix.Stat(p, &fst); err != nil || fst.Blocks*512 > 16<<10 {
			t.Fatalf("%s after release: %d blocks of 512 bytes, %v (want a stub)", p, fst.Blocks, err)
		}
	}
	// WATCHDOG_USEC=1s: a WATCHDOG=1 every 500 ms.
	t0 := time.Now()
	for range 3 {
		n1.until(t, 3*time.Second, "WATCHDOG=1", nil)
	}
	if el := time.Since(t0); el > 2500*time.Millisecond {
		t.Errorf("three WATCHDOG=1 took %s with WATCHDOG_USEC=1000000 (want one every 500ms)", el)
	}
	if strings.Contains(d1.logs(), "started interceptor holder") {
		t.Errorf("the daemon started a holder of its own although the unit's answered:\n%s", d1.logs())
	}
	stop(n1, d1)
	if st, err := interceptor.QueryHolder(holderSocket(data)); err != nil || st.State != "waiting" {
		t.Fatalf("after the daemon stopped, the holder: %+v %v (want waiting: the group parked with it)", st, err)
	}

	// Second start, over three stubs: READY=1 only once all are marked.
	n2 := listenNotify(t)
	d2 := startHardened(t, setpriv, "strata.service", []string{"NOTIFY_SOCKET=" + n2.path}, runArgs...)
	before := waitReady(n2, d2, len(files))
	if !strings.Contains(strings.Join(before, "\n"), "STATUS=marking stubs") {
		t.Errorf("no STATUS=marking stubs before READY=1: %q", before)
	}
	for p, want := range files {
		got, err := exec.Command("cat", p).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("cat %s under the hardened daemon: %d bytes (want %d), %v", p, len(got), len(want), err)
		}
	}
	stop(n2, d2)
	select {
	case <-holder.done:
		t.Fatalf("the holder exited: %s", holder.logs())
	default:
	}
}

// TestSystemdJournalLogs: with stderr the stream $JOURNAL_STREAM names,
// log lines carry no time of their own and start with their syslog
// priority; with stderr elsewhere (a holder logging to a file while it
// inherited the variable) they are as before, with their time.
func TestSystemdJournalLogs(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "stream")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	for _, jsonLogs := range []bool{false, true} {
		t.Setenv("JOURNAL_STREAM", strconv.FormatUint(st.Dev, 10)+":"+strconv.FormatUint(st.Ino, 10))
		f.Truncate(0)
		f.Seek(0, 0)
		l := newLoggerTo(f, jsonLogs, slog.LevelDebug)
		l.Debug("d", "k", 1)
		l.Info("i says ERROR")
		l.Warn("w")
		l.Error("e", "err", "boom")
		b, _ := os.ReadFile(f.Name())
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 4 {
			t.Fatalf("json=%v: %d lines: %q", jsonLogs, len(lines), b)
		}
		for i, prio := range []string{"<7>", "<6>", "<4>", "<3>"} {
			if !strings.HasPrefix(lines[i], prio) {
				t.Errorf("json=%v: line %q does not start with %s", jsonLogs, lines[i], prio)
			}
			if strings.Contains(lines[i], "time") {
				t.Errorf("json=%v: line %q has a time of its own under journald", jsonLogs, lines[i])
			}
		}

		// Another stream (the variable inherited, stderr elsewhere).
		t.Setenv("JOURNAL_STREAM", strconv.FormatUint(st.Dev, 10)+":"+strconv.FormatUint(st.Ino+1, 10))
		f.Truncate(0)
		f.Seek(0, 0)
		newLoggerTo(f, jsonLogs, slog.LevelInfo).Info("i")
		b, _ = os.ReadFile(f.Name())
		if strings.HasPrefix(string(b), "<") || !strings.Contains(string(b), "time") {
			t.Errorf("json=%v, not the journal's stream: %q (want the time, no priority prefix)", jsonLogs, b)
		}
	}
}
