package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// TestRecallDiskFull: the hot filesystem fills up while a stub is being
// recalled through the real daemon (directory tier, seekable zstd objects,
// the recall reader as the Source). cat gets ENOSPC, not EIO; once space
// is freed, with no other step, cat reads every byte, the file is
// archived (xattrs and strata ls: archived-clean only because its content
// was proven to be its object) and the catalog equals a replay of the log.
func TestRecallDiskFull(t *testing.T) {
	stratatest.NeedRoot(t)
	stratatest.NeedTool(t, "cat")
	bin := buildStrata(t)
	for i, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) { recallDiskFull(t, bin, fstype, uint64(300+i)) })
	}
}

func recallDiskFull(t *testing.T, bin, fstype string, seed uint64) {
	hot := stratatest.LoopMount(t, fstype, 512<<20)
	data := t.TempDir()
	cold := filepath.Join(data, "cold") // inside the data directory: created, no mount required
	sock := filepath.Join(data, "interceptor", "holder.sock")
	t.Cleanup(func() { killHolder(t, sock) })
	// The filler fills the disk on purpose: no watermark may archive it.
	cfg := filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(cfg, []byte("[policy]\nhigh_watermark = 100\nlow_watermark = 99\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Below WholeFileBelow (recalled whole at open) and above it (range
	// first); both partly random, so that they do not compress to nothing.
	files := map[string][]byte{}
	for i, n := range []int{40 << 20, 80<<20 + 4096} {
		random, text := contentGen(seed, uint64(i))
		b := append(random(16<<20), text(n-16<<20)...)
		p := filepath.Join(hot, fmt.Sprintf("f%d.bin", i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files[p] = b
	}
	d := startRecallDaemon(t, bin, data, hot, cold, "", cfg)
	for attempt := 1; ; attempt++ {
		var sum archiveSummary
		cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
		var ls scanner.LsReply
		cliJSON(t, &ls, "ls", "--json", "--data", data, hot)
		if len(notReleased(ls, files)) == 0 {
			break
		}
		for _, s := range sum.Skipped {
			if !strings.Contains(s.Reason, "open by another process") {
				t.Fatalf("archive skipped %s: %s", s.Path, s.Reason)
			}
		}
		if attempt == 3 {
			t.Fatalf("after %d archives, not released: %v", attempt, notReleased(ls, files))
		}
		waitFor(t, time.Minute, func() error { return stagesIdle(data) })
	}

	filler := fillHot(t, hot, 1<<20)
	for path, b := range files {
		out, errb, err := catFile(path)
		if err == nil || !strings.Contains(errb, "No space left on device") {
			t.Fatalf("cat of %s on a full disk: %d bytes, %v: %s; want ENOSPC", path, len(out), err, errb)
		}
		if !bytes.Equal(out, b[:len(out)]) {
			t.Fatalf("cat of %s on a full disk printed %d bytes that are not the file's", path, len(out))
		}
	}

	// The hot tree is a condition status shows (not one line per failed
	// recall), until there is room again.
	hotKey := "space:hot:" + hot
	waitFor(t, 10*time.Second, func() error { return wantCondition(t, data, hotKey, true) })

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error { return wantCondition(t, data, hotKey, false) })
	for path, b := range files {
		out, errb, err := catFile(path)
		if err != nil {
			t.Fatalf("cat of %s once space is back: %v: %s", path, err, errb)
		}
		if !bytes.Equal(out, b) {
			i := 0
			for i < len(out) && i < len(b) && out[i] == b[i] {
				i++
			}
			t.Fatalf("cat of %s once space is back: %d bytes, want %d; first difference at byte %d", path, len(out), len(b), i)
		}
		waitRecalled(t, data, path)
		if info, err := stub.ReadPath(path); err != nil || info.State != stub.Archived {
			t.Fatalf("xattrs of %s: %+v %v, want state archived", path, info, err)
		}
	}
	if o, e, code := cli(t, "replay", "--verify", "--data", data); code != 0 {
		t.Fatalf("replay --verify: exit %d: %s%s", code, o, e)
	}
	var ls scanner.LsReply
	cliJSON(t, &ls, "ls", "--json", "--data", data, hot)
	for _, f := range ls.Files {
		if _, ours := files[f.Path]; ours && f.State != catalog.StateArchived.String() {
			t.Errorf("ls %s: state %q, want %q", f.Path, f.State, catalog.StateArchived)
		}
	}
	stopCleanly(t, d, sock, true)
}

// fillHot takes every free block of the filesystem at dir but free bytes
// with a filler file (allocated, not written) and returns its path.
func fillHot(t *testing.T, dir string, free int64) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var off int64
	for n := int64(1 << 30); n >= 4096; {
		switch err := unix.Fallocate(int(f.Fd()), 0, off, n); {
		case err == nil:
			off += n
		case errors.Is(err, unix.ENOSPC):
			var st unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			off, n = st.Size, n/2
		default:
			t.Fatal(err)
		}
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, free); err != nil {
		t.Fatal(err)
	}
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	return p
}

// catFile runs cat on path and returns its output and stderr.
func catFile(path string) ([]byte, string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command("cat", path)
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.Bytes(), errb.String(), err
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		return out.Bytes(), errb.String(), fmt.Errorf("cat %s: still running after 2 minutes", path)
	}
}
