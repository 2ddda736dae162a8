//go:build linux

package interceptor_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// proc is a program started in the background.
type proc struct {
	name   string
	done   chan struct{}
	out    []byte
	stderr bytes.Buffer
	err    error
}

func background(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	p := &proc{name: name + " " + strings.Join(args, " "), done: make(chan struct{})}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		p.out = out.Bytes()
		close(p.done)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); <-p.done })
	return p
}

// blocked fails the test if p ends within d.
func (p *proc) blocked(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("%s ended (%v, %s) while it should wait for a daemon", p.name, p.err, p.stderr.String())
	case <-time.After(d):
	}
}

// wait returns once p ended, or fails the test after d.
func (p *proc) wait(t *testing.T, d time.Duration) *proc {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s still running after %s", p.name, d)
	}
	return p
}

// failedEIO fails the test unless p ended with an error naming EIO.
func (p *proc) failedEIO(t *testing.T) {
	t.Helper()
	if p.err == nil || !strings.Contains(p.stderr.String(), "Input/output error") {
		t.Fatalf("%s: %v, stderr %q, %d bytes out; want it refused with EIO", p.name, p.err, p.stderr.String(), len(p.out))
	}
}

func holderState(t *testing.T, sock, want string) interceptor.HolderState {
	t.Helper()
	var st interceptor.HolderState
	checkFor(t, 10*time.Second, func() error {
		var err error
		if st, err = interceptor.QueryHolder(sock); err != nil {
			return err
		}
		if st.State != want {
			return fmt.Errorf("holder state %+v, want %q", st, want)
		}
		return nil
	})
	return st
}

// TestCleanStopKeepsStubsGuarded: after a clean stop the holder keeps the
// group and its marks. A program reading a stub waits; a daemon started
// within the grace gives it its bytes. Once the grace is over, reads and
// writes of stubs get EIO — never zeros, and a write never lands in a
// stub — until a daemon is back, and then the stub reads right.
func TestCleanStopKeepsStubsGuarded(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	forEach(t, func(t *testing.T, fs string, mode interceptor.Mode) {
		bigPath, big, sock, env := crashSetup(t, fs, mode)
		small := filepath.Join(filepath.Dir(bigPath), "small.bin")
		smallData := content(78, 300<<10)

		d1 := startDaemon(t, append(env, envGrace+"=60s"))
		d1.stdin.Close()
		<-d1.done
		if d1.err != nil {
			t.Fatalf("daemon close: %v", d1.err)
		}
		holderState(t, sock, "waiting")

		// Within the grace: the reader waits, and the next daemon answers it.
		rd := background(t, "sha256sum", bigPath)
		rd.blocked(t, time.Second)
		d2 := startDaemon(t, append(env, envGrace+"=1s"))
		rd.wait(t, 60*time.Second)
		if want := fmt.Sprintf("%x", sha256.Sum256(big)); rd.err != nil || !strings.HasPrefix(string(rd.out), want) {
			t.Fatalf("sha256sum across a restart: %v %s, got %q, want %s", rd.err, rd.stderr.String(), rd.out, want)
		}
		holderState(t, sock, "session")

		// Past the grace: refused.
		d2.stdin.Close()
		<-d2.done
		if d2.err != nil {
			t.Fatalf("daemon close: %v", d2.err)
		}
		rd = background(t, "cat", small)
		rd.wait(t, 30*time.Second).failedEIO(t)
		wr := background(t, "dd", "if=/dev/urandom", "of="+small, "bs=4096", "count=1", "conv=notrunc,fsync", "status=none")
		wr.wait(t, 30*time.Second).failedEIO(t)
		st := holderState(t, sock, "denying")
		if st.Denied < 2 {
			t.Errorf("holder denied %d events, want at least the read and the write", st.Denied)
		}

		// Back: the stub reads right; the refused write left no trace.
		d3 := startDaemon(t, env)
		got, err := exec.Command("cat", small).Output()
		if err != nil {
			t.Fatalf("cat after the restart: %v", err)
		}
		sameBytes(t, "stub read after a refused write", got, smallData)
		d3.stdin.Close()
		<-d3.done
	})
}

// TestCrashThenNoDaemon: the daemon is killed while a program waits on a
// recall it had begun; no daemon comes back. Past the grace the holder
// answers the orphaned event with EIO (the program does not hang for
// ever, and gets no zeros); a later daemon serves the stub.
func TestCrashThenNoDaemon(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	stubPath, data, sock, env := crashSetup(t, "xfs", interceptor.ModePreAccess)
	marker := filepath.Join(t.TempDir(), "in-source")
	d1 := startDaemon(t, append(env, envBlock+"="+marker, envGrace+"=1s"))
	out, readerDone := startReader(t, stubPath, marker)
	if err := d1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d1.done
	err := waitReader(t, readerDone)
	if err == nil || !strings.Contains(err.Error(), "Input/output error") {
		t.Fatalf("reader of a stub whose daemon died and never came back: %v; want EIO", err)
	}
	if b, _ := os.ReadFile(out); len(b) > 0 && bytes.Equal(b, make([]byte, len(b))) {
		t.Fatalf("the reader got %d zero bytes", len(b))
	}
	st := holderState(t, sock, "denying")
	if st.Denied < 1 {
		t.Fatalf("holder state %+v: the orphan is not counted", st)
	}

	d2 := startDaemon(t, env)
	got, err := exec.Command("sha256sum", stubPath).Output()
	if want := fmt.Sprintf("%x", sha256.Sum256(data)); err != nil || !strings.HasPrefix(string(got), want) {
		t.Fatalf("sha256sum after the restart: %v, got %q, want %s", err, got, want)
	}
	d2.stdin.Close()
	<-d2.done
}
