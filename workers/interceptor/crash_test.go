//go:build linux

package interceptor_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// Roles of the test binary, re-executed by these tests: "daemon" (env
// roleEnv) runs an interceptor with a holder and a journal; the holder is
// started by that daemon as `<test binary> interceptor-holder --socket P`,
// the argv the real binary must accept too.
const (
	roleEnv    = "STRATA_IT_ROLE"
	envObjects = "STRATA_IT_OBJECTS" // dir of object copies named by object id
	envStubs   = "STRATA_IT_STUBS"   // stub paths to mark, separated by ":"
	envSocket  = "STRATA_IT_SOCKET"
	envJournal = "STRATA_IT_JOURNAL"
	envMode    = "STRATA_IT_MODE"
	envBlock   = "STRATA_IT_BLOCK" // a marker path: every source read creates it and blocks forever
	envGrace   = "STRATA_IT_GRACE" // interceptor.Config.HolderGrace
)

func holderRole(args []string) int {
	fs := flag.NewFlagSet("interceptor-holder", flag.ContinueOnError)
	socket := fs.String("socket", "", "socket path")
	if err := fs.Parse(args); err != nil || *socket == "" {
		fmt.Fprintln(os.Stderr, "usage: interceptor-holder --socket PATH")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(logOut(), nil)).With("role", "holder")
	if err := interceptor.HolderMain(ctx, *socket, logger); err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	return 0
}

// daemonRole marks the stubs, prints "ready", and runs until stdin
// closes; then it closes the interceptor, prints its stats and exits.
func daemonRole() int {
	src := &testSource{dir: os.Getenv(envObjects), objects: map[string]*object{}}
	if err := loadObjects(src); err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 1
	}
	if marker := os.Getenv(envBlock); marker != "" {
		src.gate = make(chan struct{}) // never closed
		src.onGate = func() { os.WriteFile(marker, nil, 0o600) }
	}
	cfg := interceptor.NewConfig()
	cfg.Mode = interceptor.Mode(os.Getenv(envMode))
	cfg.WholeFileBelow = 1 << 20
	cfg.StopTimeout = 2 * time.Second
	cfg.HolderSocket = os.Getenv(envSocket)
	cfg.JournalDir = os.Getenv(envJournal)
	cfg.HolderCommand = nil // the default: this executable, interceptor-holder --socket P
	if g := os.Getenv(envGrace); g != "" {
		d, err := time.ParseDuration(g)
		if err != nil {
			fmt.Fprintln(os.Stderr, "daemon:", err)
			return 1
		}
		cfg.HolderGrace = d
	}
	cfg.Failpoints = failpoint.New()
	logger := slog.New(slog.NewTextHandler(logOut(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("role", "daemon", "pid", os.Getpid())
	it, err := interceptor.Open(cfg, src, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 1
	}
	for _, p := range strings.Split(os.Getenv(envStubs), ":") {
		if err := it.Mark(p); err != nil {
			fmt.Fprintln(os.Stderr, "daemon:", err)
			return 1
		}
	}
	fmt.Printf("ready orphans=%d\n", it.Stats().Orphans)
	io.Copy(io.Discard, os.Stdin)
	if err := it.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 1
	}
	return 0
}

func loadObjects(src *testSource) error {
	ents, err := os.ReadDir(src.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(src.dir, e.Name()))
		if err != nil {
			return err
		}
		o := &object{path: filepath.Join(src.dir, e.Name())}
		for off := 0; off < len(data); off += frameSize {
			o.frames = append(o.frames, sha256.Sum256(data[off:min(off+frameSize, len(data))]))
		}
		src.objects[e.Name()] = o
	}
	return nil
}

// daemonProc is a running daemon role.
type daemonProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready string
	done  chan struct{} // closed when it exited; then err is its exit
	err   error
}

func startDaemon(t *testing.T, env []string) *daemonProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), roleEnv+"=daemon"), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		io.Copy(io.Discard, stdout)
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-d.done:
		case <-time.After(20 * time.Second):
			t.Errorf("daemon %d did not exit 20s after SIGKILL", cmd.Process.Pid)
		}
	})
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("daemon exited before ready")
		}
		d.ready = l
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon not ready within 60s")
	}
	return d
}

// crashSetup makes a 64 MiB stub (and a small one) on a fresh filesystem;
// no mark is left on them: the daemon marks them, as it would from the
// catalog.
func crashSetup(t *testing.T, fs string, mode interceptor.Mode) (stubPath string, data []byte, sock string, env []string) {
	e := newEnv(t, fs, mode, nil)
	data = content(77, 64<<20)
	stubPath = filepath.Join(e.mnt, "big.bin")
	makeStub(t, e.it, e.src, stubPath, data, 0o644)
	small := filepath.Join(e.mnt, "small.bin")
	makeStub(t, e.it, e.src, small, content(78, 300<<10), 0o644)
	if err := e.it.Close(); err != nil { // flushes its marks
		t.Fatal(err)
	}
	sock = filepath.Join(t.TempDir(), "holder.sock")
	env = []string{envObjects + "=" + e.src.dir, envStubs + "=" + stubPath + ":" + small,
		envSocket + "=" + sock, envJournal + "=" + t.TempDir(), envMode + "=" + string(mode)}
	t.Cleanup(func() {
		if pid, err := interceptor.HolderPID(sock); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return stubPath, data, sock, env
}

// startReader starts dd on the stub and waits until the blocked daemon has
// a read of it in its source (the marker file exists).
func startReader(t *testing.T, stubPath, marker string) (out string, done chan error) {
	out = filepath.Join(t.TempDir(), "out")
	cmd := exec.Command("dd", "if="+stubPath, "of="+out, "bs=1M", "status=none")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done = make(chan error, 1)
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("dd: %w: %s", err, stderr.String())
		}
		done <- err
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	checkFor(t, 30*time.Second, func() error {
		if _, err := os.Stat(marker); err != nil {
			return fmt.Errorf("daemon never reached its source: %w", err)
		}
		return nil
	})
	return out, done
}

func waitReader(t *testing.T, done chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("reader still blocked 60s after the restart")
		return nil
	}
}

// TestCrashRecovery kills -9 the daemon while dd is held on a 64 MiB stub
// whose bytes the daemon is still fetching; the holder keeps the group, a
// restarted daemon answers the orphaned event from the journal, and dd
// ends with every byte right.
func TestCrashRecovery(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	forEach(t, func(t *testing.T, fs string, mode interceptor.Mode) {
		stubPath, data, sock, env := crashSetup(t, fs, mode)
		marker := filepath.Join(t.TempDir(), "in-source")
		d1 := startDaemon(t, append(env, envBlock+"="+marker))
		out, readerDone := startReader(t, stubPath, marker)

		if err := d1.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-d1.done
		select {
		case err := <-readerDone:
			t.Fatalf("reader released by the daemon's death (%v): the holder should keep it blocked", err)
		default:
		}

		d2 := startDaemon(t, env)
		if d2.ready == "ready orphans=0" {
			t.Fatalf("restarted daemon answered no orphaned event (%q)", d2.ready)
		}
		if err := waitReader(t, readerDone); err != nil {
			t.Fatalf("reader after restart: %v", err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(got) != sha256.Sum256(data) {
			sameBytes(t, "dd output after a daemon crash", got, data)
		}

		// A clean stop leaves the group with the holder.
		d2.stdin.Close()
		<-d2.done
		if d2.err != nil {
			t.Fatalf("daemon close: %v", d2.err)
		}
		if st, err := interceptor.QueryHolder(sock); err != nil || st.State != "waiting" {
			t.Fatalf("holder after a clean stop: %+v, %v; want it waiting with the group", st, err)
		}
	})
}

// TestCrashOfHolderAndDaemon documents the window that remains: if the
// holder dies as well, the group closes, the kernel allows the held read
// and the stub reads as zeros, with no error.
func TestCrashOfHolderAndDaemon(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	stubPath, data, sock, env := crashSetup(t, "ext4", interceptor.ModePreAccess)
	marker := filepath.Join(t.TempDir(), "in-source")
	d1 := startDaemon(t, append(env, envBlock+"="+marker))
	out, readerDone := startReader(t, stubPath, marker)
	pid, err := interceptor.HolderPID(sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := d1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d1.done
	if err := waitReader(t, readerDone); err != nil {
		t.Fatalf("reader: %v", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(data) || !bytes.Equal(got, make([]byte, len(data))) {
		t.Fatalf("expected the documented residual window (%d zero bytes), got %d bytes, not all zero", len(data), len(got))
	}
}
