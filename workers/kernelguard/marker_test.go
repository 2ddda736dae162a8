//go:build linux

package kernelguard

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestMarker shows root can set, read and remove security.bpf.strata on
// loop-mounted ext4 and XFS.
func TestMarker(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fstype, 512<<20)
			p := filepath.Join(mnt, "f")
			makeResident(t, p, 4096)
			fd := openRO(t, p)
			defer unix.Close(fd)
			check := func(want bool) {
				t.Helper()
				got, err := HasMarker(fd)
				if err != nil || got != want {
					t.Fatalf("HasMarker = %v, %v; want %v", got, err, want)
				}
			}
			check(false)
			if err := ClearMarker(fd); err != nil {
				t.Fatalf("ClearMarker without a marker: %v", err)
			}
			if err := SetMarker(fd); err != nil {
				t.Fatal(err)
			}
			check(true)
			var buf [8]byte
			n, err := unix.Getxattr(p, MarkerName, buf[:])
			if err != nil || string(buf[:n]) != "1" {
				t.Fatalf("getxattr %s = %q, %v", MarkerName, buf[:n], err)
			}
			if err := ClearMarker(fd); err != nil {
				t.Fatal(err)
			}
			check(false)
		})
	}
}
