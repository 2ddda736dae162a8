package main

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

	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// TestHoleProbers: the real daemon with the probe guard, on ext4 and XFS.
// A renamed copy of the system's cp (not on whole_file_programs, so not
// recalled at open) and filefrag ask a large stub where its data is: each
// is stopped (SIGKILL) before it can copy the hole as zeros — before the
// guard the copy was a file of zeros and exit status 0. The daemon then
// recalls the stub whole, and the same program's retry copies the right
// bytes. A resident sparse file is copied by the renamed cp untouched;
// strata doctor reports the guard.
func TestHoleProbers(t *testing.T) {
	stratatest.NeedRoot(t)
	cpPath := stratatest.NeedTool(t, "cp")
	filefrag := stratatest.NeedTool(t, "filefrag")
	bin := buildStrata(t)
	renamed := filepath.Join(t.TempDir(), "copytool")
	b, err := os.ReadFile(cpPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(renamed, b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) { holeProbers(t, bin, renamed, filefrag, fstype) })
	}
}

func holeProbers(t *testing.T, bin, renamed, filefrag, fstype string) {
	hot := stratatest.LoopMount(t, fstype, 512<<20)
	data := t.TempDir()
	random, text := contentGen(500, 1)
	want := append(random(40<<20), text(40<<20)...) // above whole_file_below
	big := filepath.Join(hot, "big.bin")
	if err := os.WriteFile(big, want, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startStrata(t, bin, data, hot, filepath.Join(data, "cold"), "")
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != 1 {
		t.Fatalf("archive: %+v", sum)
	}
	out, err := exec.Command(bin, "doctor", "--data", data).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "guard loaded") {
		t.Fatalf("strata doctor with the daemon running: %v\n%s", err, out)
	}

	killed := func(what string, err error) {
		t.Helper()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("%s on a stub: %v; want it killed (SIGKILL) by the probe guard\n%s", what, err, d.logs())
		}
	}
	dst := filepath.Join(t.TempDir(), "copy")
	killed("a renamed cp", exec.Command(renamed, big, dst).Run())
	if got, err := os.ReadFile(dst); err == nil && len(got) == len(want) && bytes.Equal(got, make([]byte, len(got))) {
		t.Fatalf("the renamed cp wrote %d zero bytes", len(got))
	}

	// The daemon recalls the stub whole for the retry.
	waitFor(t, time.Minute, func() error {
		if !strings.Contains(d.logs(), "probe guard stopped a program") {
			return errors.New("no log of the stopped program yet")
		}
		info, err := stub.ReadPath(big)
		if err != nil || info.State != stub.Archived {
			return fmt.Errorf("stub state %+v %v, want archived (recalled whole)", info, err)
		}
		return nil
	})
	if err := exec.Command(renamed, big, dst).Run(); err != nil {
		t.Fatalf("retry of the renamed cp: %v", err)
	}
	if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("retry of the renamed cp: %d bytes, equal %v, %v", len(got), bytes.Equal(got, want), err)
	}

	// filefrag (FIEMAP) on a stub again.
	archiveWait(t, data, big)
	killed("filefrag", exec.Command(filefrag, "-v", big).Run())

	// A resident sparse file is none of the guard's business.
	sparse := filepath.Join(hot, "sparse.img")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("data at 64 MiB"), 64<<20)
	f.Close()
	if out, err := exec.Command(renamed, sparse, dst).CombinedOutput(); err != nil {
		t.Fatalf("renamed cp of a resident sparse file: %v %s", err, out)
	}
	// And once the stub is whole again, the same program reads it.
	waitFor(t, time.Minute, func() error {
		info, err := stub.ReadPath(big)
		if err != nil || info.State != stub.Archived {
			return fmt.Errorf("stub state %+v %v, want archived (recalled whole)", info, err)
		}
		return nil
	})
	if err := exec.Command(filefrag, "-v", big).Run(); err != nil {
		t.Fatalf("filefrag of the recalled file: %v", err)
	}
}

// archiveWait archives path now and waits until it is a stub again.
func archiveWait(t *testing.T, data, path string) {
	t.Helper()
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, path)
	if sum.Released != 1 {
		t.Fatalf("archive %s: %+v", path, sum)
	}
}
