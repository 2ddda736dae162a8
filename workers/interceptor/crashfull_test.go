//go:build linux

package interceptor_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// TestCrashDiskFull kills -9 a daemon (holder and journal, mode
// pre-access) at each failpoint of a recall while the hot filesystem is
// full and a fill is failing, or about to fail, for ENOSPC; restarts it on
// the still full disk; frees the space; and then every byte a program
// reads, and every byte on disk, must be the original. The daemons run
// with the memmove that stores the head of a copy last
// (GODEBUG=cpu.fsrm=off): a store killed at its fault leaves its segment's
// first bytes zero, data that looks filled, which the journal's slot for
// the segment must get punched by the next daemon (FailStoreFaulted).
//
// The held program may get ENOSPC (its bytes could not be stored), never
// EIO and never wrong bytes.
func TestCrashDiskFull(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	cases := []struct {
		point string
		free  int64 // bytes left free before the first read
	}{
		{interceptor.FailAfterEvent, 1 << 20},
		{interceptor.FailStoreFaulted, 1<<20 + 512<<10},
		{interceptor.FailAfterFill, 2<<20 + 512<<10},
		{interceptor.FailAfterAnswer, 1 << 20},
		{interceptor.FailInFinish, -1}, // room for all; the disk is filled after the kill
	}
	for _, fs := range stratatest.FSTypes {
		for i, c := range cases {
			t.Run(fs+"/"+strings.TrimPrefix(c.point, "interceptor."), func(t *testing.T) {
				crashDiskFull(t, fs, c.point, c.free, uint64(800+i))
			})
		}
	}
}

func crashDiskFull(t *testing.T, fs, point string, free int64, seed uint64) {
	e := newEnv(t, fs, interceptor.ModePreAccess, nil)
	data := content(seed, 6*frameSize+8192)
	stubPath := filepath.Join(e.mnt, "full.bin")
	makeStub(t, e.it, e.src, stubPath, data, 0o644)
	if err := e.it.Close(); err != nil { // flushes its marks: the daemons mark the stub
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "holder.sock")
	env := []string{envObjects + "=" + e.src.dir, envStubs + "=" + stubPath, envSocket + "=" + sock,
		envJournal + "=" + t.TempDir(), envMode + "=" + string(interceptor.ModePreAccess),
		"GODEBUG=" + strings.TrimPrefix(os.Getenv("GODEBUG")+",cpu.fsrm=off", ",")}
	t.Cleanup(func() {
		if pid, err := interceptor.HolderPID(sock); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	var filler string
	if free >= 0 {
		filler = fillDisk(t, e.mnt)
		freeSpace(t, filler, free)
	}

	d1 := startDaemon(t, append(env, failpoint.EnvVar+"="+point))
	rd := startDD(t, stubPath)
	select {
	case <-d1.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon still running 60s after the reader started: failpoint %s never reached", point)
	}
	if ws, ok := d1.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("daemon ended with %v, want killed by SIGKILL at %s", d1.cmd.ProcessState, point)
	}
	if filler == "" {
		filler = fillDisk(t, e.mnt) // the restart runs on a full disk too
	}

	// Restart on the full disk: the held program gets the right bytes or
	// ENOSPC.
	d2 := startDaemon(t, env)
	out, err := rd.wait(t)
	switch {
	case err == nil:
		sameBytes(t, "held reader after the restart", out, data)
	case strings.Contains(err.Error(), "No space left on device"):
		t.Logf("held reader after the restart on a full disk: %v", err)
	default:
		t.Fatalf("held reader after the restart: %v; want the original bytes or ENOSPC", err)
	}

	// Space comes back: every byte reads right, with no manual step.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	syncFS(t, e.mnt)
	sameBytes(t, "cat once space is back", mustRun(t, "cat", stubPath), data)
	checkFor(t, 30*time.Second, func() error {
		if info, err := stub.ReadPath(stubPath); err != nil || info.State != stub.Archived {
			return fmt.Errorf("stub state %q (%v), want archived", info.State, err)
		}
		return nil
	})
	d2.stdin.Close()
	<-d2.done
	if d2.err != nil {
		t.Fatalf("daemon close: %v", d2.err)
	}
	// No daemon and no holder: no mark, the file reads as it is on disk.
	got, err := os.ReadFile(stubPath)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "the file on disk at the end", got, data)
}

// ddReader is dd reading a whole stub, in 1 MiB reads.
type ddReader struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan error
}

func startDD(t *testing.T, path string) *ddReader {
	t.Helper()
	r := &ddReader{done: make(chan error, 1)}
	r.cmd = exec.Command("dd", "if="+path, "bs=1M", "status=none")
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() { r.cmd.Process.Kill() })
	return r
}

// wait returns what dd read, or its error with its stderr.
func (r *ddReader) wait(t *testing.T) ([]byte, error) {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			return nil, fmt.Errorf("dd: %w: %s", err, r.stderr.String())
		}
		return r.stdout.Bytes(), nil
	case <-time.After(60 * time.Second):
		t.Fatal("reader still blocked 60s after the restart")
		return nil, errors.New("unreachable")
	}
}
