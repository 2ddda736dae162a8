// Package stratatest holds helpers shared by Strata's tests: the rule for
// skipping (a test that cannot run here skips with a reason, unless
// STRATA_REQUIRE_ALL=1, as in CI, makes every skip a failure) and
// loop-mounted ext4 and XFS filesystems that are always unmounted and
// detached in t.Cleanup.
//
// Only tests import this package.
package stratatest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// RequireAll reports whether STRATA_REQUIRE_ALL=1 is set: then a test that
// cannot run fails instead of skipping.
func RequireAll() bool { return os.Getenv("STRATA_REQUIRE_ALL") == "1" }

// Skip skips t with reason, or fails it when RequireAll.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if RequireAll() {
		t.Fatalf("STRATA_REQUIRE_ALL=1 and this test cannot run: %s", reason)
	}
	t.Skip(reason)
}

// NeedRoot skips (or fails, see Skip) unless running as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root (loop mounts, fanotify, trusted.* xattrs)")
	}
}

// NeedTool returns the path of an executable, or skips (or fails) if it is
// not installed.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, "needs %s on PATH (.ci/run installs it)", name)
	}
	return p
}

// FSTypes are the filesystems hot-tier tests run on.
var FSTypes = []string{"ext4", "xfs"}

// LoopMount creates a sparse image of size bytes, makes a filesystem of
// fstype ("ext4" or "xfs") on it, mounts it on a fresh directory and returns
// that directory. The mount is unmounted and the image removed in t.Cleanup,
// even when the test fails. mkfsArgs go to mkfs before the image (e.g.
// "-b", "4096": images under 512 MiB get 1 KiB ext4 blocks otherwise).
func LoopMount(t testing.TB, fstype string, size int64, mkfsArgs ...string) string {
	t.Helper()
	NeedRoot(t)
	var mkfs []string
	switch fstype {
	case "ext4":
		mkfs = []string{NeedTool(t, "mkfs.ext4"), "-q", "-F"}
	case "xfs":
		mkfs = []string{NeedTool(t, "mkfs.xfs"), "-q", "-f"}
	default:
		t.Fatalf("LoopMount: unsupported fstype %q", fstype)
	}
	NeedTool(t, "mount")
	dir := t.TempDir()
	img := filepath.Join(dir, fstype+".img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		t.Fatal(err)
	}
	f.Close()
	run(t, append(append(mkfs, mkfsArgs...), img)...)
	run(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() { Unmount(t, mnt) })
	return mnt
}

// Unmount unmounts mnt (lazily if it is busy); the loop device is detached
// automatically because it was set up by mount -o loop.
func Unmount(t testing.TB, mnt string) {
	t.Helper()
	for i := 0; i < 50; i++ {
		out, err := exec.Command("umount", mnt).CombinedOutput()
		if err == nil || strings.Contains(string(out), "not mounted") {
			return
		}
		time.Sleep(100 * time.Millisecond) // the only wait: a busy mount after a killed process
	}
	if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
		t.Errorf("umount -l %s: %v: %s", mnt, err, out)
	}
}

func run(t testing.TB, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}
