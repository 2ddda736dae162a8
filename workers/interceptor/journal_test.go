//go:build linux

package interceptor

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// copySource serves a plain copy of the content (the test trusts it).
type copySource struct{ path string }

func (s copySource) ReadVerified(_ context.Context, _ stub.Info, p []byte, off int64) (string, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.ReadAt(p, off); err != nil {
		return "", err
	}
	return "copy", nil
}

// TestJournalPunchesHalfWrittenChunk: a fill killed mid-copy leaves pages
// that are data but hold zeros. The next recall of that stub must punch
// the chunk the journal names and fill it again, not take it as filled.
func TestJournalPunchesHalfWrittenChunk(t *testing.T) {
	stratatest.NeedRoot(t)
	mnt := stratatest.LoopMount(t, "ext4", 256<<20)
	data := make([]byte, 8<<20+100)
	r := rand.New(rand.NewPCG(1, 2))
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
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Fstat(int(f.Fd()), &st)
	sum := blake3.Sum256(data)
	err = stub.Write(int(f.Fd()), stub.Info{FileID: "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", ObjectID: hex.EncodeToString(sum[:]), State: stub.Released, Size: int64(len(data))})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := NewConfig()
	cfg.Mode = ModePreAccess
	cfg.WholeFileBelow = -1
	cfg.JournalDir = t.TempDir()
	a, err := Open(cfg, copySource{orig}, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Release(path); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil { // no mark left
		t.Fatal(err)
	}
	// What a kill -9 in the middle of copying chunk 1 leaves: its first
	// pages are data (zeros past where the copy stopped), the rest holes,
	// and the journal still names the chunk.
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	half := append(append([]byte(nil), data[4<<20:4<<20+6000]...), make([]byte, 8192-6000)...)
	if _, err := f.WriteAt(half, 4<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	j, err := openJournal(cfg.JournalDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.beginFill(inodeKey{st.Dev, st.Ino}, "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", 4<<20, 4<<20); err != nil {
		t.Fatal(err)
	}
	j.close() // the "crash": the slot stays set

	b, err := Open(cfg, copySource{orig}, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Mark(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		i := 0
		for i < len(got) && got[i] == data[i] {
			i++
		}
		t.Fatalf("recalled %d bytes, first difference at %d (a half-written chunk was taken for filled)", len(got), i)
	}
}

// TestJournalAnswering: an event whose answer was being written when the
// daemon died is not an orphan (answering it again after new events were
// read could release one of them unfilled): the next daemon gets it as a
// pending answer, with the errno that was decided, to write again before
// its first read.
func TestJournalAnswering(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Three events on dups of one file: one answered and ended, one being
	// answered (EIO) at the crash, one still in flight.
	var fds []int
	for range 3 {
		fd, err := unix.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		fds = append(fds, fd)
	}
	ev := func(fd int) event {
		return event{fd: fd, mask: unix.FAN_PRE_ACCESS, hasRange: true, off: 4096, count: 8192}
	}
	s0, s1, s2 := j.begin(ev(fds[0])), j.begin(ev(fds[1])), j.begin(ev(fds[2]))
	if s0 == 0 || s1 == 0 || s2 == 0 {
		t.Fatal("begin did not record the events")
	}
	j.answering(fds[0], s0, 0)
	j.end(fds[0], s0)
	j.answering(fds[1], s1, unix.EIO)
	j.answering(fds[2], s2-1, 0) // a stale token changes nothing
	j.close()                    // the crash

	j, err = openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	if got := j.pendingAnswers(); len(got) != 1 || got[fds[1]] != unix.EIO {
		t.Fatalf("pending answers %v, want only fd %d with EIO", got, fds[1])
	}
	orphans := j.orphans()
	if len(orphans) != 1 || orphans[0].fd != fds[2] || orphans[0].seq != s2 {
		t.Fatalf("orphans %+v, want only the event in flight on fd %d", orphans, fds[2])
	}
	j.clearEvent(fds[1])
	if got := j.pendingAnswers(); len(got) != 0 {
		t.Fatalf("pending answers after clearEvent: %v", got)
	}
	if s := j.begin(ev(fds[0])); s <= s2 {
		t.Fatalf("token %d after reopening, want past %d", s, s2)
	}
}
