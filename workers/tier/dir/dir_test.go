package dir_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/dir"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

func open(t *testing.T, root string) *dir.Target {
	t.Helper()
	tgt, err := dir.Open(dir.Config{Name: "hdd", Root: root}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return tgt
}

// damage truncates or flips a byte of a stored file.
func damage(t *testing.T, path string, how tiertest.Damage) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	switch how {
	case tiertest.Truncate:
		if err := os.Truncate(path, st.Size()/2); err != nil {
			t.Fatal(err)
		}
	case tiertest.FlipByte:
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, st.Size()/2); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x40
		if _, err := f.WriteAt(b, st.Size()/2); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConformance(t *testing.T) {
	tiertest.Run(t, tiertest.Suite{
		New: func(t *testing.T) tier.Target { return open(t, t.TempDir()) },
		Damage: func(t *testing.T, tgt tier.Target, id string, how tiertest.Damage) {
			damage(t, filepath.Join(tgt.(*dir.Target).Root(), tier.ObjectKey(id)), how)
		},
	})
}

func TestLayoutIsPlainFiles(t *testing.T) {
	root := t.TempDir()
	tgt := open(t, root)
	o, data := tiertest.NewObject(1, 5000)
	loc, err := tgt.Put(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(root, "objects", o.ID[:2], o.ID+".zst")
	if loc != want {
		t.Fatalf("location %s, want %s", loc, want)
	}
	got, err := os.ReadFile(want)
	if err != nil || string(got) != string(data) {
		t.Fatalf("object file: %v", err)
	}
	if m, err := os.ReadFile(strings.TrimSuffix(want, ".zst") + ".json"); err != nil || string(m) != string(o.Manifest) {
		t.Fatalf("manifest file %q: %v", m, err)
	}
	if s, err := os.ReadFile(strings.TrimSuffix(want, ".zst") + ".b3"); err != nil || string(s) != o.PackedSum+"  "+o.ID+".zst\n" {
		t.Fatalf("sum file %q: %v", s, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(want))
	if len(ents) != 3 {
		t.Fatalf("object directory holds %d entries, want 3 (no temporary files left)", len(ents))
	}
	// b3sum checks the object without Strata, when installed.
	if b3, err := execLook("b3sum"); err == nil {
		out, err := runIn(filepath.Dir(want), b3, "-c", o.ID+".b3")
		if err != nil {
			t.Fatalf("b3sum -c: %v: %s", err, out)
		}
	}
}

func TestFullDisk(t *testing.T) {
	mnt := stratatest.LoopMount(t, "ext4", 16<<20)
	tgt := open(t, mnt)
	small, smallData := tiertest.NewObject(2, 1<<20)
	if _, err := tgt.Put(context.Background(), small); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{20 << 20, 14 << 20} {
		big, data := tiertest.NewObject(3, size)
		big.Open = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(data))), nil }
		_, err := tgt.Put(context.Background(), big)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("put of %d bytes on a 16 MiB disk: %v, want ENOSPC", size, err)
		}
		if !strings.Contains(err.Error(), "no space left on device") {
			t.Fatalf("error %q does not say the disk is full", err)
		}
		if _, err := tgt.Stat(context.Background(), big.ID); !errors.Is(err, tier.ErrNotFound) {
			t.Fatalf("stat after full disk: %v, want ErrNotFound", err)
		}
		ents, _ := os.ReadDir(filepath.Join(mnt, "objects", big.ID[:2]))
		for _, e := range ents {
			if strings.Contains(e.Name(), big.ID+".zst") {
				t.Fatalf("left %s behind after ENOSPC (%v)", e.Name(), err)
			}
		}
	}
	// The object stored before is intact, and space is free again.
	if _, err := tgt.Verify(context.Background(), small.ID); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(mnt, tier.ObjectKey(small.ID)))
	if err != nil || string(got) != string(smallData) {
		t.Fatalf("earlier object damaged: %v", err)
	}
	again, _ := tiertest.NewObject(4, 4<<20)
	if _, err := tgt.Put(context.Background(), again); err != nil {
		t.Fatalf("put after ENOSPC: %v", err)
	}
}

func TestUnavailable(t *testing.T) {
	root := t.TempDir()
	tgt := open(t, root)
	// An unmounted disk: the objects directory is gone.
	if err := os.RemoveAll(filepath.Join(root, "objects")); err != nil {
		t.Fatal(err)
	}
	tiertest.CheckUnavailable(t, tgt)
}

func TestConfig(t *testing.T) {
	for _, c := range []dir.Config{
		{Name: "", Root: "/tmp"},
		{Name: "a.b", Root: "/tmp"},
		{Name: "hdd", Root: "relative"},
		{Name: "hdd", Root: ""},
	} {
		if _, err := dir.Open(c, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("open %+v: no error", c)
		}
	}
	if _, err := dir.Open(dir.Config{Name: "hdd", Root: filepath.Join(t.TempDir(), "missing")}, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("open with a missing root: no error")
	}
}
