package beneath_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/beneath"
)

func TestOpen(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "a", "b"), 0o700))
	must(os.WriteFile(filepath.Join(root, "a", "b", "f"), []byte("in"), 0o600))
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte("out"), 0o600))
	must(os.Symlink(outside, filepath.Join(root, "a", "link")))
	must(os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "a", "filelink")))

	fd, err := beneath.Open(root, filepath.Join(root, "a", "b", "f"), unix.O_RDONLY)
	if err != nil {
		t.Fatalf("a file inside: %v", err)
	}
	unix.Close(fd)
	for _, p := range []string{
		filepath.Join(root, "a", "link", "secret"), // through a directory symlink
		filepath.Join(root, "a", "filelink"),       // a symlink as the last component
		filepath.Join(outside, "secret"),           // not inside at all
		filepath.Join(root, "..", filepath.Base(outside), "secret"),
	} {
		fd, err := beneath.Open(root, p, unix.O_RDONLY)
		if err == nil {
			unix.Close(fd)
			t.Errorf("%s opened: it leaves the tree", p)
			continue
		}
		if !errors.Is(err, beneath.ErrOutside) {
			t.Errorf("%s: %v, want ErrOutside", p, err)
		}
	}
	if _, err := beneath.Open(root, filepath.Join(root, "gone"), unix.O_RDONLY); !errors.Is(err, unix.ENOENT) {
		t.Errorf("missing file: %v, want ENOENT", err)
	}
}
