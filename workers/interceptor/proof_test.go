//go:build linux

package interceptor_test

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

	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// TestProofFillsAgainWhatDiffers: a stub becomes archived only once its
// whole content, read back from disk, hashes to its object. Chunk 1 holds
// what a failed fill used to leave when the recall begins (data whose
// first 32 bytes are zeros, as a faulting head-last memmove left them),
// the mtime unchanged: the fill of the chunk's holes keeps it (data is
// never overwritten), the proof finds it, punches the chunk and fills it
// again, and the recall completes (not as a modification) with every byte
// right. Before the proof existed, the file was archived with the zeros.
func TestProofFillsAgainWhatDiffers(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, nil)
			data := content(601, 3*frameSize+8192)
			path := filepath.Join(e.mnt, "bad-chunk.bin")
			makeStub(t, e.it, e.src, path, data, 0o644)
			info, err := stub.ReadPath(path)
			if err != nil {
				t.Fatal(err)
			}
			bad := append(make([]byte, 32), data[frameSize+32:frameSize+1<<20]...)
			writeUnguarded(t, e, path, bad, frameSize, time.Unix(0, info.MtimeNS))

			// Read chunk 0 only: the rest is filled in the background.
			got, err := ddAt(t, path, 0, 4096)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, "first page", got, data[:4096])
			c := e.comp.waitComplete(t, path)
			if c.Modified || c.Truncated {
				t.Errorf("completion %+v: a fill's fault taken for a modification", c)
			}
			if fails := e.comp.failures(); len(fails) != 0 {
				t.Errorf("failures %+v", fails)
			}
			sameBytes(t, "cat after the recall", mustRun(t, "cat", path), data)
			if info, err := stub.ReadPath(path); err != nil || info.State != stub.Archived {
				t.Fatalf("state %q (%v), want archived", info.State, err)
			}
		})
	}
}

// TestProofKeepsProgramWrites: a program that writes into a chunk after
// it was filled, while the recall goes on, makes the file differ from its
// object; the proof must keep what it wrote (never punch it as a fill's
// fault) and report the recall as a modification.
func TestProofKeepsProgramWrites(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, nil)
			data := content(602, 3*frameSize+8192)
			path := filepath.Join(e.mnt, "written.bin")
			makeStub(t, e.it, e.src, path, data, 0o644)
			// Only chunk 0 is served until the program has written.
			gate := make(chan struct{})
			e.src.mu.Lock()
			e.src.gate, e.src.allow = gate, func(off int64) bool { return off == 0 }
			e.src.mu.Unlock()
			if _, err := ddAt(t, path, 0, 4096); err != nil {
				t.Fatal(err)
			}
			patch := "written by a program during the recall"
			if _, err := runIn(t, patch, "dd", "of="+path, "bs=1M", "seek=1000", "oflag=seek_bytes", "conv=notrunc", "status=none"); err != nil {
				t.Fatal(err)
			}
			e.src.mu.Lock()
			e.src.gate, e.src.allow = nil, nil
			e.src.mu.Unlock()
			close(gate)
			c := e.comp.waitComplete(t, path)
			if !c.Modified {
				t.Errorf("completion %+v, want Modified", c)
			}
			want := append([]byte(nil), data...)
			copy(want[1000:], patch)
			sameBytes(t, "cat after the recall", mustRun(t, "cat", path), want)
			if fails := e.comp.failures(); len(fails) != 0 {
				t.Errorf("failures %+v", fails)
			}
		})
	}
}

// writeUnguarded writes b at off into the stub at path with its mark off
// for the moment (the write recalls nothing), then puts mtime back.
func writeUnguarded(t *testing.T, e *env, path string, b []byte, off int64, mtime time.Time) {
	t.Helper()
	if err := e.it.Unmark(path); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := e.it.Mark(path); err != nil {
		t.Fatal(err)
	}
}

// runIn runs a program with stdin and returns its stdout.
func runIn(t *testing.T, stdin string, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}
