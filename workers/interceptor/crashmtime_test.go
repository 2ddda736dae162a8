//go:build linux

package interceptor

import (
	"bytes"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// TestJournalPutsBackMtime: a store killed midway on ext4 leaves the
// stub's mtime stamped (page faults stamp it; the dead process cannot put
// it back). The next recall punches the segment the journal names and
// puts back the mtime the journal recorded from before that store: the
// recalled file has its archived mtime, and is not taken for modified.
func TestJournalPutsBackMtime(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 256<<20)
	data := make([]byte, 8<<20+100)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	path := filepath.Join(mnt, "f")
	orig := filepath.Join(t.TempDir(), "orig")
	for _, p := range []string{path, orig} {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	archived := time.Date(2021, 3, 4, 5, 6, 7, 800, time.UTC)
	if err := os.Chtimes(path, archived, archived); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Fstat(int(f.Fd()), &st)
	sum := blake3.Sum256(data)
	err = stub.Write(int(f.Fd()), stub.Info{FileID: "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", ObjectID: hex.EncodeToString(sum[:]), State: stub.Released,
		Size: int64(len(data)), MtimeNS: archived.UnixNano()})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	cfg := NewConfig()
	cfg.Mode = ModePreAccess
	cfg.WholeFileBelow = -1
	cfg.JournalDir = t.TempDir()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := Open(cfg, copySource{orig}, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Release(path); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, archived, archived); err != nil { // as the releaser does
		t.Fatal(err)
	}
	// The killed store: half a segment written, the mtime stamped, the
	// slot still set with the mtime from before it.
	j, err := openJournal(cfg.JournalDir)
	if err != nil {
		t.Fatal(err)
	}
	slot, err := j.beginFill(inodeKey{st.Dev, st.Ino}, "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", 4<<20, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	j.setFillMtime(slot, archived.UnixNano())
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 8192), 4<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	j.close()
	var stamped unix.Stat_t
	unix.Stat(path, &stamped)
	if stamped.Mtim.Nano() == archived.UnixNano() {
		t.Fatal("setup: the write did not move the mtime")
	}

	b, err := Open(cfg, copySource{orig}, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Mark(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("recalled bytes differ from the original (%v)", err)
	}
	var after unix.Stat_t
	if err := unix.Stat(path, &after); err != nil {
		t.Fatal(err)
	}
	if after.Mtim.Nano() != archived.UnixNano() {
		t.Fatalf("mtime after the recall %v, want the archived %v (the crashed store's stamp %v)",
			time.Unix(0, after.Mtim.Nano()).UTC(), archived, time.Unix(0, stamped.Mtim.Nano()).UTC())
	}
}
