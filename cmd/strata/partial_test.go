package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/releaser"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// logCount counts the events of the log (read with `strata events
// --json`) of type kind, and of those the ones whose data names file id
// (any when id is "").
func logCount(t *testing.T, data string, kind events.Kind, id string) int {
	t.Helper()
	out, errs, code := cli(t, "events", "--json", "--data", data)
	if code != 0 {
		t.Fatalf("strata events: %s", errs)
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		var env struct {
			Type string `json:"type"`
			Data struct {
				FileID string `json:"file_id"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(line), &env); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		if env.Type == kind.Type() && (id == "" || env.Data.FileID == id) {
			n++
		}
	}
	return n
}

// lsEntry returns strata ls of path.
func lsOf(t *testing.T, data, path string) scanner.LsEntry {
	t.Helper()
	var ls scanner.LsReply
	cliJSON(t, &ls, "ls", "--json", "--data", data, path)
	if len(ls.Files) != 1 {
		t.Fatalf("ls %s: %+v", path, ls)
	}
	return ls.Files[0]
}

// mustOut runs a real program and returns its stdout.
func mustOut(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s %v: %v: %s", name, args, err, stderr)
	}
	return out
}

// TestPartialStubs: partially resident stubs and the resident head,
// through the real binary on loop-mounted ext4 and XFS, with real
// programs:
//   - `tail -c 100` of a 100 MiB stub, held while the daemon is killed
//     (kill -9 at the failpoint after its fill) and restarted, reads the
//     right bytes and leaves it a stub, partially resident (strata ls: released, RESIDENT above 0 and
//     below 100 %), with no recall.completed;
//   - strata release frees its recalled range again, with no new
//     object.stored, and the stub still reads right;
//   - a read in the middle, then kill -9 of the daemon: the restarted
//     daemon serves the partial stub with the right bytes, and a
//     sequential sha256sum ends with the whole file back
//     (archived-clean);
//   - a 20 MiB stub (under fill_whole_below) is filled whole after a read
//     of one page;
//   - with release.resident_head and resident_tail, `file` of a stub (it
//     reads 7 MiB at each end) answers from them: no recall.requested for
//     the file, and its bytes are right.
func TestPartialStubs(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, tool := range []string{"tail", "dd", "sha256sum", "file", "head"} {
		stratatest.NeedTool(t, tool)
	}
	bin := buildStrata(t)
	for _, fstype := range stratatest.FSTypes {
		t.Run(fstype, func(t *testing.T) {
			hot := stratatest.LoopMount(t, fstype, 400<<20)
			data := t.TempDir()
			cold := filepath.Join(data, "cold") // inside the data directory: no mount required
			random, _ := contentGen(1200, 1)
			write := func(name string, n int) (string, []byte) {
				p := filepath.Join(hot, name)
				b := random(n)
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
				return p, b
			}
			config := func(extra string) string {
				p := filepath.Join(t.TempDir(), "strata.toml")
				body := "[interceptor]\nwhole_file_below = \"1MiB\"\n" + extra
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			}
			// The last 100 bytes straddle a page boundary, so tail -c 100
			// needs a recall whatever the release kept.
			big, bigData := write("big.bin", 100<<20+50)
			small, smallData := write("small.bin", 20<<20+7)
			cfgA := config("")
			// The first daemon dies (kill -9, a failpoint) once it has
			// filled the range tail -c 100 waits for, before it answers.
			d0 := startStrata(t, bin, data, hot, cold, interceptor.FailAfterFill, "--config", cfgA)
			archiveWait(t, data, big)
			archiveWait(t, data, small)
			info, err := stub.ReadPath(big)
			if err != nil {
				t.Fatal(err)
			}
			stored := logCount(t, data, events.KindObjectStored, "")

			// tail -c 100, across a kill -9: right bytes, and partial.
			tailCmd := exec.Command("tail", "-c", "100", big)
			var tailOut bytes.Buffer
			tailCmd.Stdout = &tailOut
			if err := tailCmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tailCmd.Process.Kill() })
			d0.wait(t, 30*time.Second)
			if !strings.Contains(d0.logs(), "failpoint "+interceptor.FailAfterFill+": killing process") {
				t.Fatalf("daemon died but not at its failpoint:\n%s", d0.logs())
			}
			d1 := startStrata(t, bin, data, hot, cold, "", "--config", cfgA)
			if err := waitExit(tailCmd, time.Minute); err != nil {
				t.Fatalf("tail -c 100 across a kill -9 of the daemon: %v", err)
			}
			if got := tailOut.Bytes(); !bytes.Equal(got, bigData[len(bigData)-100:]) {
				t.Fatalf("tail -c 100 across a kill -9: %q", got)
			}
			var e scanner.LsEntry
			waitFor(t, 30*time.Second, func() error {
				e = lsOf(t, data, big)
				if e.State != "released" || e.Resident <= 0 || e.Resident >= e.Size/4 {
					return fmt.Errorf("ls after tail -c 100: %+v", e)
				}
				return nil
			})
			out, _, _ := cli(t, "ls", "--data", data, big)
			if !strings.Contains(out, "RESIDENT") || strings.Contains(out, " 100.0%") || strings.Contains(out, " 0.0%") {
				t.Errorf("strata ls shows no partial stub:\n%s", out)
			}
			if n := logCount(t, data, events.KindRecallCompleted, info.FileID); n != 0 {
				t.Fatalf("%d recall.completed after tail -c 100 of a 100 MiB stub", n)
			}

			// strata release: freed again, no upload.
			var rep releaser.RepunchReply
			cliJSON(t, &rep, "release", "--json", "--data", data, big)
			if len(rep.Files) != 1 || rep.Files[0].Skipped != "" || rep.Files[0].Freed < 1<<20 {
				t.Fatalf("strata release: %+v", rep)
			}
			if e := lsOf(t, data, big); e.Resident > 64<<10 {
				t.Fatalf("ls after strata release: %+v", e)
			}
			if n := logCount(t, data, events.KindObjectStored, ""); n != stored {
				t.Fatalf("strata release published %d object.stored", n-stored)
			}
			if got := mustOut(t, "tail", "-c", "100", big); !bytes.Equal(got, bigData[len(bigData)-100:]) {
				t.Fatalf("tail -c 100 after strata release: %q", got)
			}

			// A small stub is filled whole after one page.
			if got := mustOut(t, "dd", "if="+small, "bs=4096", "skip=3", "count=1", "status=none"); !bytes.Equal(got, smallData[3*4096:4*4096]) {
				t.Fatal("dd of the small stub: wrong bytes")
			}
			waitFor(t, time.Minute, func() error {
				if e := lsOf(t, data, small); e.State != "archived" {
					return fmt.Errorf("small stub after one page: %+v", e)
				}
				return nil
			})
			if got := mustOut(t, "cat", small); !bytes.Equal(got, smallData) {
				t.Fatal("cat of the small file: wrong bytes")
			}

			// A read in the middle, then kill -9: partial state survives.
			mid := mustOut(t, "dd", "if="+big, "bs=1M", "skip=50", "count=1", "status=none")
			if !bytes.Equal(mid, bigData[50<<20:51<<20]) {
				t.Fatal("dd in the middle: wrong bytes")
			}
			if err := d1.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			d1.wait(t, 30*time.Second)
			startStrata(t, bin, data, hot, cold, "", "--config", config("[release]\nresident_head = \"8MiB\"\nresident_tail = \"8MiB\"\n"))
			if e := lsOf(t, data, big); e.State != "released" || e.Resident <= 0 || e.Resident >= e.Size/4 {
				t.Fatalf("ls after the restart: %+v", e)
			}
			if got := mustOut(t, "dd", "if="+big, "bs=1M", "skip=50", "count=1", "status=none"); !bytes.Equal(got, mid) {
				t.Fatal("dd in the middle after kill -9 and restart: wrong bytes")
			}
			if got := mustOut(t, "dd", "if="+big, "bs=1M", "skip=70", "count=2", "status=none"); !bytes.Equal(got, bigData[70<<20:72<<20]) {
				t.Fatal("dd elsewhere after the restart: wrong bytes")
			}
			want := fmt.Sprintf("%x", sha256.Sum256(bigData))
			if got := mustOut(t, "sha256sum", big); !strings.HasPrefix(string(got), want) {
				t.Fatalf("sha256sum: %s, want %s", got, want)
			}
			waitFor(t, time.Minute, func() error {
				if e := lsOf(t, data, big); e.State != "archived" || e.Resident < e.Size {
					return fmt.Errorf("after sha256sum: %+v", e)
				}
				return nil
			})

			// A resident head and tail: file needs no recall.
			doc, docData := write("doc.pdf", 40<<20+999)
			copy(docData, "%PDF-1.4\n")
			if err := os.WriteFile(doc, docData, 0o644); err != nil {
				t.Fatal(err)
			}
			archiveWait(t, data, doc)
			docInfo, err := stub.ReadPath(doc)
			if err != nil {
				t.Fatal(err)
			}
			e = lsOf(t, data, doc)
			if e.State != "released" || e.Resident < 16<<20 || e.Resident > 17<<20 {
				t.Fatalf("ls of a stub with an 8 MiB head and tail: %+v", e)
			}
			if got := string(mustOut(t, "file", doc)); !strings.Contains(got, "PDF") {
				t.Fatalf("file: %s", got)
			}
			if got := mustOut(t, "head", "-c", "100000", doc); !bytes.Equal(got, docData[:100000]) {
				t.Fatal("head of the stub: wrong bytes")
			}
			if n := logCount(t, data, events.KindRecallRequested, docInfo.FileID); n != 0 {
				t.Fatalf("file and head of a stub's resident head published %d recall.requested", n)
			}
			if e := lsOf(t, data, doc); e.State != "released" || e.Resident > 17<<20 {
				t.Fatalf("ls after file: %+v", e)
			}
			if got := mustOut(t, "cat", doc); !bytes.Equal(got, docData) {
				t.Fatal("cat of the stub with a resident head: wrong bytes")
			}
		})
	}
}
