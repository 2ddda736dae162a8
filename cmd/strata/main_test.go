package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/kernelguard"
)

// testRunEnv marks every process this test binary starts, and every
// process those start (daemons, and their interceptor holders inherit the
// environment), with one token per run, so that TestMain can find holders
// a test left behind.
const testRunEnv = "STRATA_TEST_RUN"

// TestMain serves two roles. An in-process daemon (testDaemon) starts its
// holder as `<this test binary> interceptor-holder --socket P` (the
// default interceptor.HolderCommand is os.Executable()), so this binary
// must run the holder subcommand when called that way instead of the
// tests. After the tests, any holder process of this run still alive is a
// leak: a test that killed a daemon with -9 did not stop its holder. It is
// killed, and the run fails.
func TestMain(m *testing.M) {
	// As main does: data directories (the tests' t.TempDir()s) are the
	// owner's alone, and the daemon refuses any other.
	unix.Umask(0o077)
	if len(os.Args) > 1 && os.Args[1] == interceptor.DefaultHolderSubcommand {
		os.Exit(exitCode(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr), os.Stderr))
	}
	var tok [8]byte
	rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	os.Setenv(testRunEnv, token)
	// The daemons of this run share one probe guard of their own, taken
	// out of the kernel at the end (pins outlive processes).
	guardDir := "/sys/fs/bpf/strata-test-" + token
	os.Setenv(guardDirEnv, guardDir)
	code := m.Run()
	if err := kernelguard.Remove(guardDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "FAIL: remove the tests' probe guard %s: %v\n", guardDir, err)
		code = 1
	}
	if leaked := killHolders(token); len(leaked) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d interceptor holder process(es) left running by the tests (killed now): %v\n", len(leaked), leaked)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// stopHolderOf stops the holder a stopped daemon of data left guarding its
// stubs (a clean stop parks the fanotify group with it), if one answers.
func stopHolderOf(t *testing.T, data string) {
	sock := holderSocket(data)
	st, err := interceptor.QueryHolder(sock)
	if err != nil {
		return
	}
	if err := interceptor.StopHolder(sock); err != nil {
		t.Errorf("stop the holder %d of %s: %v (killed)", st.PID, data, err)
		syscall.Kill(st.PID, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if s := procState(st.PID); s == 0 || s == 'Z' {
			return
		}
	}
	t.Errorf("holder %d of %s still running 10s after it was stopped", st.PID, data)
}

// killHolders kills (SIGKILL, by pid) every interceptor holder whose
// environment carries this run's token, and returns their pids.
func killHolders(token string) []int {
	var out []int
	for _, pid := range holderPIDs(token) {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			out = append(out, pid)
		}
	}
	return out
}

// holderPIDs lists the live interceptor holders started by this run (their
// environment holds testRunEnv=token).
func holderPIDs(token string) []int {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(cmdline, []byte{0})
		if len(args) < 2 || string(args[1]) != interceptor.DefaultHolderSubcommand {
			continue
		}
		env, err := os.ReadFile(filepath.Join(p, "environ"))
		if err != nil || !bytes.Contains(append([]byte{0}, env...), []byte("\x00"+testRunEnv+"="+token+"\x00")) {
			continue
		}
		if procState(pid) == 'Z' {
			continue // exited; its parent has not reaped it yet
		}
		out = append(out, pid)
	}
	return out
}

// procState is the state letter of /proc/PID/stat ('R', 'S', 'D', 'Z'…),
// or 0 if the process is gone.
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) S ...: comm may hold spaces and parentheses; the state
	// follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}
