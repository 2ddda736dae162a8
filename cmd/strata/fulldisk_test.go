package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// fillFS writes a filler file in dir until the filesystem refuses with
// ENOSPC (as root, so the reserved blocks go too), and returns its path.
// Called again it tops the filler up (Strata frees room too: a staged
// object goes once its copies are stored).
func fillFS(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0x5a}, 1<<20)
	for _, chunk := range []int{1 << 20, 64 << 10, 4 << 10} {
		for {
			if _, err := f.Write(buf[:chunk]); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filler: %v", err)
				}
				break
			}
		}
	}
	_ = f.Sync() // may itself fail with ENOSPC: the point is a full disk
	return p
}

// runBin runs the strata binary with args, killed after limit, and
// returns its combined output, its exit code (-1: killed) and how long it
// ran.
func runBin(t *testing.T, bin string, limit time.Duration, args ...string) (string, int, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = strataEnv("")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	code := 0
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		code = -1
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("strata %s: %v", strings.Join(args, " "), err)
	}
	return string(out), code, took
}

// linesWith counts the lines of s that contain sub, debug lines aside
// (the daemon runs with --debug so that a test can see what it did).
func linesWith(s, sub string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.Contains(l, "level=DEBUG") {
			n++
		}
	}
	return n
}

// TestFullDataDir: the data directory (event log, catalog, staging) is a
// small ext4 that another program fills to the last block while the real
// daemon runs. Then: status names the full filesystem and where it is
// mounted; doctor names it; a new archive is refused at once with the
// reason (and --timeout holds); the log says it once, not once per retry;
// SIGTERM stops the daemon in bounded time. When space returns everything
// resumes by itself: the archive goes through, the catalog equals a replay
// of the log, and every file reads back its original bytes, also after a
// restart.
func TestFullDataDir(t *testing.T) {
	bin := buildStrata(t)
	data := stratatest.LoopMount(t, "ext4", 256<<20)
	if err := os.Chmod(data, 0o700); err != nil {
		t.Fatal(err)
	}
	hot := stratatest.LoopMount(t, "ext4", 128<<20)
	cold := stratatest.LoopMount(t, "ext4", 128<<20)
	random, text := contentGen(7, 3)
	first := writeFiles(t, hot, map[string][]byte{"a/one.bin": random(1 << 20), "a/two.txt": text(300 << 10)})
	d := startStrata(t, bin, data, hot, cold, "", "--debug")
	if out, code, _ := runBin(t, bin, time.Minute, "archive", "--wait", "--timeout", "50s", "--data", data, filepath.Join(hot, "a")); code != 0 {
		t.Fatalf("archive before the disk is full: exit %d\n%s", code, out)
	}
	second := writeFiles(t, hot, map[string][]byte{"b/three.bin": random(700 << 10), "b/four.txt": text(90 << 10)})

	// 1. Another program fills the data filesystem.
	logStart := len(d.logs()) // before: the daemon may see the filler grow
	filler := fillFS(t, data)

	// status names the condition: which place, which filesystem, mounted
	// where, what to do.
	var status string
	waitFor(t, 20*time.Second, func() error {
		fillFS(t, data)
		out, code, _ := runBin(t, bin, 15*time.Second, "status", "--data", data)
		status = out
		if code != 0 || !strings.Contains(out, "OUT OF SPACE") {
			return fmt.Errorf("status does not show the full data directory (exit %d):\n%s", code, out)
		}
		return nil
	})
	t.Logf("strata status on a full data directory:\n%s", status)
	for _, want := range []string{"data directory", data, "free space"} {
		if !strings.Contains(status, want) {
			t.Errorf("status should name %q:\n%s", want, status)
		}
	}
	// doctor names it too.
	if out, code, _ := runBin(t, bin, 30*time.Second, "doctor", "--data", data); code == 0 || !strings.Contains(out, "out of space") || !strings.Contains(out, data) {
		t.Errorf("doctor with a full data directory: exit %d, want a failure naming %s:\n%s", code, data, out)
	}
	// A new archive is refused (or gives up) within its timeout, saying why.
	out, code, took := runBin(t, bin, 40*time.Second, "archive", "--wait", "--timeout", "10s", "--data", data, filepath.Join(hot, "b"))
	t.Logf("strata archive on a full data directory: exit %d after %s: %s", code, took.Round(time.Millisecond), out)
	if code == 0 || code == -1 || took > 15*time.Second || !strings.Contains(out, "out of space") {
		t.Errorf("archive --wait --timeout 10s on a full data directory: exit %d after %s, want a failure within 15s saying out of space:\n%s", code, took.Round(time.Millisecond), out)
	}
	// The daemon keeps quiet: one line when the condition began, not one
	// per retry.
	logs := d.logs()[logStart:]
	if n := linesWith(logs, "no space left on device"); n > 10 {
		t.Errorf("the log has %d lines about no space left (want a few): first ones:\n%s", n, firstLines(logs, "no space left on device", 10))
	}
	if n := linesWith(logs, "out of space:"); n != 1 {
		t.Errorf("the log has %d lines starting the out-of-space condition, want 1:\n%s", n, logs)
	}

	// 2. Space returns: everything resumes by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() error {
		out, code, _ := runBin(t, bin, 15*time.Second, "status", "--data", data)
		if code != 0 || strings.Contains(out, "OUT OF SPACE") {
			return fmt.Errorf("status after space returned (exit %d):\n%s", code, out)
		}
		return nil
	})
	if n := linesWith(d.logs()[logStart:], "space is back"); n != 1 {
		t.Errorf("the log has %d lines ending the condition, want 1", n)
	}
	if out, code, _ := runBin(t, bin, 90*time.Second, "archive", "--wait", "--timeout", "60s", "--data", data, filepath.Join(hot, "b")); code != 0 {
		t.Fatalf("archive once space is back: exit %d\n%s", code, out)
	}
	checkFullDiskFiles(t, bin, data, hot, first, second)

	// 3. The disk fills while files are being archived (the compressor
	// staging them, events being recorded): the waiting archive gives up
	// within its timeout saying why; then SIGTERM stops the daemon in
	// bounded time.
	third := writeFiles(t, hot, map[string][]byte{"c/x.bin": random(12 << 20), "c/y.bin": random(12 << 20), "c/z.bin": random(12 << 20)})
	logStart = len(d.logs())
	type result struct {
		out  string
		code int
		took time.Duration
	}
	archived := make(chan result, 1)
	go func() {
		out, code, took := runBin(t, bin, 40*time.Second, "archive", "--wait", "--timeout", "10s", "--data", data, filepath.Join(hot, "c"))
		archived <- result{out, code, took}
	}()
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(d.logs()[logStart:], "file.selected") && !strings.Contains(d.logs()[logStart:], "compressor") {
			return errors.New("the archive has not started yet")
		}
		return nil
	})
	filler = fillFS(t, data)
	waitFor(t, 20*time.Second, func() error {
		fillFS(t, data)
		out, _, _ := runBin(t, bin, 15*time.Second, "status", "--data", data)
		if !strings.Contains(out, "OUT OF SPACE") {
			return fmt.Errorf("status does not show the full data directory:\n%s", out)
		}
		return nil
	})
	switch r := <-archived; {
	case r.code == 0:
		t.Logf("the archive finished before the disk was full: %s", r.out)
	case r.code == -1 || r.took > 15*time.Second || !strings.Contains(r.out, "out of space"):
		t.Errorf("archive --wait --timeout 10s while the disk fills: exit %d after %s, want a failure within 15s saying out of space:\n%s", r.code, r.took.Round(time.Millisecond), r.out)
	default:
		t.Logf("archive while the disk fills: exit %d after %s: %s", r.code, r.took.Round(time.Millisecond), r.out)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	termAt := time.Now()
	select {
	case <-d.done:
		t.Logf("stopped %s after SIGTERM on a full data directory", time.Since(termAt).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatalf("the daemon did not stop within 20s of SIGTERM on a full data directory; log tail:\n%s", tail(d.logs(), 40))
	}
	logs = d.logs()[logStart:]
	if !strings.Contains(logs, "strata stopped") {
		t.Errorf("no orderly stop in the log:\n%s", tail(logs, 40))
	}
	if n := linesWith(logs, "no space left on device"); n > 10 {
		t.Errorf("the log has %d lines about no space left (want a few): first ones:\n%s", n, firstLines(logs, "no space left on device", 10))
	}
	t.Logf("while the disk filled during an archive: %d stage messages held for room, %d held when stopping; %d JetStream restarts",
		strings.Count(logs, "message held until there is room"), strings.Count(logs, "stopping while out of space"), strings.Count(logs, "restarting JetStream"))

	// 4. Space returns; a restart finds an intact catalog and log, and
	// finishes the archive.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	startStrata(t, bin, data, hot, cold, "")
	if out, code, _ := runBin(t, bin, 100*time.Second, "archive", "--wait", "--timeout", "90s", "--data", data, filepath.Join(hot, "c")); code != 0 {
		t.Fatalf("archive after the restart: exit %d\n%s", code, out)
	}
	checkFullDiskFiles(t, bin, data, hot, first, second, third)
	assertNoDeadLetters(t, data)
}

// checkFullDiskFiles: the catalog equals a replay of the log, and every
// file, released or not, reads back its original bytes.
func checkFullDiskFiles(t *testing.T, bin, data, hot string, sets ...map[string][]byte) {
	t.Helper()
	if out, code, _ := runBin(t, bin, 60*time.Second, "replay", "--verify", "--data", data); code != 0 {
		t.Errorf("replay --verify: exit %d\n%s", code, out)
	}
	for _, set := range sets {
		for name, want := range set {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			got, err := exec.CommandContext(ctx, "cat", filepath.Join(hot, name)).Output()
			cancel()
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("cat %s: %d bytes, want the original %d: %v", name, len(got), len(want), err)
			}
		}
	}
}

func firstLines(s, sub string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && len(out) < n {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
