//go:build linux

package interceptor_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// tarWarnedOnly fails the test if tar failed for any reason but the one
// known warning. Fills are writes, so a stub's ctime changes while tar
// reads it and tar warns "file changed as we read it" (exit 1); the bytes
// are still right, and callers check every one of them.
func tarWarnedOnly(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	_, msg, _ := strings.Cut(err.Error(), ": exit status 1: ")
	for _, line := range strings.Split(strings.TrimSpace(msg), "\n") {
		if msg == "" || !strings.HasSuffix(strings.TrimSpace(line), "file changed as we read it") {
			t.Fatalf("tar: %v", err)
		}
	}
	t.Logf("tar warned that stubs changed while read (their ctime did): %v", err)
}

// TestHoleProbers: cp, mv across filesystems and tar -S look for data with
// SEEK_DATA before they read, which raises no event; on a stub above
// WholeFileBelow they would find one hole and copy zeros. Named in
// WholeFilePrograms (the default), they get the stub recalled whole at
// open and copy every byte. Without the policy the same cp copies zeros on
// ext4 (on XFS it clones, which raises an event): that is what the policy
// is for. The stub itself stays intact either way.
func TestHoleProbers(t *testing.T) {
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, nil)
			p := func(name string) string { return filepath.Join(e.mnt, name) }
			readBack := func(path string) []byte {
				t.Helper()
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}

			t.Run("cp", func(t *testing.T) {
				data := content(71, 6<<20+5)
				makeStub(t, e.it, e.src, p("cp.bin"), data, 0o644)
				mustRun(t, "cp", p("cp.bin"), p("cp.copy"))
				sameBytes(t, "cp copy", readBack(p("cp.copy")), data)
				if c := e.comp.waitComplete(t, p("cp.bin")); c.Process != "cp" {
					t.Fatalf("completion by %q, want cp", c.Process)
				}
			})

			t.Run("mv to another filesystem", func(t *testing.T) {
				data := content(72, 5<<20+3)
				makeStub(t, e.it, e.src, p("mv.bin"), data, 0o644)
				dst := filepath.Join(t.TempDir(), "moved.bin")
				mustRun(t, "mv", p("mv.bin"), dst)
				sameBytes(t, "moved file", readBack(dst), data)
			})

			t.Run("tar -S", func(t *testing.T) {
				data := content(73, 7<<20+11)
				makeStub(t, e.it, e.src, p("tar.bin"), data, 0o644)
				archive := filepath.Join(t.TempDir(), "sparse.tar")
				_, err := run(t, "tar", "cSf", archive, "-C", e.mnt, "tar.bin")
				tarWarnedOnly(t, err)
				x := t.TempDir()
				mustRun(t, "tar", "xf", archive, "-C", x)
				sameBytes(t, "file extracted from tar -S", readBack(filepath.Join(x, "tar.bin")), data)
			})
		})

		t.Run(fs+"/without the policy", func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) { c.WholeFilePrograms = []string{} })
			src, dst := filepath.Join(e.mnt, "cp.bin"), filepath.Join(e.mnt, "cp.copy")
			data := content(74, 6<<20+5)
			makeStub(t, e.it, e.src, src, data, 0o644)
			mustRun(t, "cp", src, dst)
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if fs == "xfs" {
				// cp clones first (FICLONE), and a clone raises an event
				// for the whole file: the copy is right.
				sameBytes(t, "cp copy by clone", got, data)
			} else if len(got) != len(data) || !bytes.Equal(got, make([]byte, len(data))) {
				t.Fatalf("cp of a stub without the policy: %d bytes, not all zeros: the hazard this policy guards against is gone, update README.md", len(got))
			}
			sameBytes(t, "the stub after cp", mustRun(t, "cat", src), data)
		})
	}
}

// TestCloneToEnd: the kernel reports a clone of a file from byte x to its
// end (FICLONE, FICLONERANGE with length 0; cp tries it first on XFS) as an
// access of 0 bytes at x, exactly as it reports a truncate to x. Taken for
// a truncate, it ended the recall with the bytes past x still holes: the
// clone and the stub itself then held zeros. Both must hold every byte.
func TestCloneToEnd(t *testing.T) {
	helper := buildHelper(t)
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) { c.WholeFilePrograms = []string{} })
			src, dst := filepath.Join(e.mnt, "clone.bin"), filepath.Join(e.mnt, "clone.copy")
			data := content(75, 9<<20+77)
			const off = 4 << 20
			makeStub(t, e.it, e.src, src, data, 0o644)
			_, err := run(t, helper, "clone", src, strconv.Itoa(off), dst)
			var exit *exec.ExitError
			switch {
			case err == nil:
				want := append(make([]byte, off), data[off:]...)
				got, err := os.ReadFile(dst)
				if err != nil {
					t.Fatal(err)
				}
				sameBytes(t, "clone of the stub's tail", got, want)
			case errors.As(err, &exit) && exit.ExitCode() == 3 && fs != "xfs":
				t.Logf("%s cannot clone: %v", fs, err)
			default:
				t.Fatal(err)
			}
			sameBytes(t, "stub after the clone", mustRun(t, "cat", src), data)
			e.comp.waitComplete(t, src)
			got, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "recalled stub", got, data)
		})
	}
}
