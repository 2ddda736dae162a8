package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestRecallFromList: `strata recall --from-list FILE --wait` (the real
// binary against a daemon whose only tier is an emulated tape) recalls
// the listed stubs in tape order — tape file, then block and offset —
// whatever the order of the list: two trees archived one after the other
// land in two tape files, and a list naming the second tree first is
// recalled first tree first. The programs' recall.requested events come
// in that order; every file reads back its bytes; a listed path that does
// not exist is reported and makes the command fail, after the others are
// back; a listed file that is not a stub is left alone.
func TestRecallFromList(t *testing.T) {
	stratatest.NeedRoot(t)
	bin := buildStrata(t)
	hot := stratatest.LoopMount(t, "ext4", 200<<20)
	data, lib := t.TempDir(), t.TempDir()
	if out, errs, code := cli(t, "tape", "label", "emulator:"+lib, "--volume", "T00001", "--pool", "main", "--capacity", "1GB"); code != 0 {
		t.Fatalf("tape label: %s %s", out, errs)
	}
	first := testFiles(t, filepath.Join(hot, "first"), 61)
	d, _ := testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}},
		Tiers: []TierConfig{{Name: "lto", Kind: "tape", Device: "emulator:" + lib, Pool: "main", BundleAge: duration(time.Second)}}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, filepath.Join(hot, "first"))
	if sum.Released != len(first) {
		t.Fatalf("archive first: %+v", sum)
	}
	second := testFiles(t, filepath.Join(hot, "second"), 62)
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, filepath.Join(hot, "second"))
	if sum.Released != len(second) {
		t.Fatalf("archive second: %+v", sum)
	}
	files := map[string][]byte{}
	type placed struct {
		path string
		pos  events.TapePosition
	}
	var want []placed
	for _, tree := range []map[string][]byte{first, second} {
		for p, b := range tree {
			files[p] = b
			f, err := d.cat.FileByPath(p)
			if err != nil {
				t.Fatal(err)
			}
			cps, err := d.cat.Copies(f.ObjectID)
			if err != nil || len(cps) != 1 || cps[0].Tape == nil {
				t.Fatalf("%s: copies %+v %v", p, cps, err)
			}
			want = append(want, placed{p, *cps[0].Tape})
		}
	}
	slices.SortFunc(want, func(a, b placed) int {
		return cmp.Or(cmp.Compare(a.pos.TapeFile, b.pos.TapeFile), cmp.Compare(a.pos.Block, b.pos.Block),
			cmp.Compare(a.pos.Offset, b.pos.Offset), strings.Compare(a.path, b.path))
	})
	if want[0].pos.TapeFile == want[len(want)-1].pos.TapeFile {
		t.Fatalf("both trees in tape file %d: the test needs two", want[0].pos.TapeFile)
	}

	// The list: the second tree's files first, each tree in reverse path
	// order, a file that is not a stub, a path that does not exist, and
	// one path twice.
	resident := filepath.Join(hot, "resident.txt")
	if err := os.WriteFile(resident, []byte("not archived\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(hot, "gone.bin")
	var list []string
	for _, tree := range []map[string][]byte{second, first} {
		names := slices.Sorted(func(yield func(string) bool) {
			for p := range tree {
				if !yield(p) {
					return
				}
			}
		})
		slices.Reverse(names)
		list = append(list, names...)
	}
	list = append(list, resident, missing, list[0])
	listFile := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(listFile, []byte(strings.Join(list, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "recall", "--from-list", listFile, "--wait", "--json", "--data", data)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil || !strings.Contains(stderr.String(), "missing: "+missing) || !strings.Contains(stderr.String(), "1 listed paths do not exist") {
		t.Fatalf("recall --from-list with a missing path: %v: %s", err, stderr.String())
	}
	var got struct {
		Files   int                      `json:"files"`
		Bytes   int64                    `json:"bytes"`
		Order   []interceptor.RecallFile `json:"order"`
		Missing []string                 `json:"missing"`
		Failed  []string                 `json:"failed"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("recall --json: %v: %s", err, stdout.String())
	}
	var order []string
	for _, f := range got.Order {
		order = append(order, f.Path)
		if f.Tier != "lto" || f.Tape == nil || f.NoCopy != "" {
			t.Fatalf("placement of %s: %+v", f.Path, f)
		}
	}
	var wantOrder []string
	var total int64
	for _, w := range want {
		wantOrder = append(wantOrder, w.path)
		total += int64(len(files[w.path]))
	}
	if !slices.Equal(order, wantOrder) {
		t.Fatalf("recall order\n%s\nwant (tape order)\n%s", strings.Join(order, "\n"), strings.Join(wantOrder, "\n"))
	}
	if got.Files != len(want) || got.Bytes != total || len(got.Failed) != 0 || !slices.Equal(got.Missing, []string{missing}) {
		t.Fatalf("summary: files %d bytes %d failed %v missing %v; want %d files, %d bytes", got.Files, got.Bytes, got.Failed, got.Missing, len(want), total)
	}

	// The recalls began in that order (the program's accesses, one file
	// after the other).
	out, _, _ := cli(t, "events", "--json", "--data", data)
	var requested []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		_, ev, err := events.Decode([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := ev.(*events.RecallRequested); ok && r.Reason == events.RecallAccess {
			requested = append(requested, r.Path)
		}
	}
	if !slices.Equal(requested, wantOrder) {
		t.Fatalf("recall.requested in order\n%s\nwant\n%s", strings.Join(requested, "\n"), strings.Join(wantOrder, "\n"))
	}
	for p, b := range files {
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s after the recall: %d bytes, equal %v, %v", p, len(got), bytes.Equal(got, b), err)
		}
	}
	if b, err := os.ReadFile(resident); err != nil || string(b) != "not archived\n" {
		t.Fatalf("the resident file: %q %v", b, err)
	}
}

// TestRecallFromListBackground: without --wait, `strata recall --from-list`
// publishes one prefetch request per stub in the order it chose — for a
// directory tier, by object — and the daemon brings every file back.
func TestRecallFromListBackground(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "xfs", 512<<20)
	data, cold := t.TempDir(), t.TempDir()
	files := testFiles(t, filepath.Join(hot, "tree"), 63)
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: cold}}})
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}
	list := slices.Sorted(func(yield func(string) bool) {
		for p := range files {
			if !yield(p) {
				return
			}
		}
	})
	slices.Reverse(list)
	listFile := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(listFile, []byte(strings.Join(list, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Files int                      `json:"files"`
		Order []interceptor.RecallFile `json:"order"`
	}
	cliJSON(t, &got, "recall", "--from-list", listFile, "--json", "--data", data)
	if got.Files != len(files) || len(got.Order) != len(files) {
		t.Fatalf("recall --from-list: %+v", got)
	}
	var order []string
	for i, f := range got.Order {
		order = append(order, f.Path)
		if f.Tier != "hdd" || f.Tape != nil || f.ObjectID == "" || (i > 0 && (f.ObjectID < got.Order[i-1].ObjectID ||
			f.ObjectID == got.Order[i-1].ObjectID && f.Path < got.Order[i-1].Path)) {
			t.Fatalf("order by object: %+v", got.Order)
		}
	}
	waitFor(t, 60*time.Second, func() error {
		out, _, _ := cli(t, "events", "--json", "--data", data)
		var prefetched []string
		completed := 0
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			_, ev, err := events.Decode([]byte(line))
			if err != nil {
				t.Fatal(err)
			}
			switch e := ev.(type) {
			case *events.RecallRequested:
				if e.Reason == events.RecallPrefetch {
					prefetched = append(prefetched, e.Path)
				}
			case *events.RecallCompleted:
				completed++
			}
		}
		if len(prefetched) == len(order) && !slices.Equal(prefetched, order) {
			t.Fatalf("prefetch requests in order\n%s\nwant\n%s", strings.Join(prefetched, "\n"), strings.Join(order, "\n"))
		}
		if len(prefetched) != len(order) || completed < len(order) {
			return fmt.Errorf("%d prefetch requests, %d recalls completed; want %d", len(prefetched), completed, len(order))
		}
		return nil
	})
	for p, b := range files {
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s after the prefetch: %d bytes, %v", p, len(got), err)
		}
	}
}
