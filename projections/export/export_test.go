package export

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/projections/catalog/catalogtest"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestMain doubles as a minimal `duckdb -c SQL` (the DuckDB CLI is not a
// Debian package) so that the restore recipe in docs/EXPORT.md runs
// verbatim, on the same DuckDB engine, when the real CLI is missing.
func TestMain(m *testing.M) {
	if os.Getenv("STRATA_TEST_DUCKDB_CLI") == "1" {
		os.Exit(duckdbCLI(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func duckdbCLI(args []string) int {
	if len(args) != 2 || args[0] != "-c" {
		fmt.Fprintln(os.Stderr, "test duckdb: only -c SQL is supported")
		return 2
	}
	db, err := sql.Open("duckdb", "")
	if err == nil {
		_, err = db.Exec(args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "duckdb:", err)
		return 1
	}
	return 0
}

func openCatalog(t testing.TB) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(t.TempDir(), catalog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// apply wraps evs in envelopes with sequences from c.LastSeq()+1 and event
// times t0 + seq seconds.
func apply(t testing.TB, c *catalog.Catalog, evs ...events.Event) {
	t.Helper()
	var envs []events.Envelope
	for _, ev := range evs {
		seq := c.LastSeq() + uint64(len(envs)) + 1
		env, err := events.New(events.NewID(ev.Kind(), strconv.FormatUint(seq, 10)), "/strata/test/x", t0.Add(time.Duration(seq)*time.Second), ev)
		if err != nil {
			t.Fatal(err)
		}
		env.Seq = seq
		envs = append(envs, env)
	}
	if err := c.Apply(envs); err != nil {
		t.Fatal(err)
	}
}

func query(t testing.TB, q string, args ...any) [][]any {
	t.Helper()
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out [][]any
	for rows.Next() {
		row := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

const (
	fidA = "0123456789abcdef0123456789abcdef"
	fidB = "fedcba9876543210fedcba9876543210"
)

var (
	obj1 = strings.Repeat("a1", 32)
	obj2 = strings.Repeat("b2", 32)
	sum  = strings.Repeat("cd", 32)
)

func stat(size, mtime int64) events.FileStat {
	return events.FileStat{Size: size, Mode: 0o100640, UID: 7, GID: 8, MtimeNS: mtime, CtimeNS: mtime, Inode: 99, Generation: 1}
}

func TestParquetRows(t *testing.T) {
	c := openCatalog(t)
	const mt = 1700000000123456789
	apply(t, c,
		&events.FileSelected{FileID: fidA, Path: "/d/a", Root: "/d", Stat: stat(100, mt), Reason: events.ReasonPolicy},
		&events.ObjectPacked{FileID: fidA, Path: "/d/a", ObjectID: obj1, Stat: stat(100, mt), Size: 100, PackedSize: 60,
			PackedSum: sum, FrameSize: 4 << 20, Frames: 1, Staging: "/s/x"},
		&events.ObjectStored{ObjectID: obj1, Tier: "disk", TierKind: events.TierDirectory, Location: "/cold/objects/a1/" + obj1 + ".zst",
			Size: 100, PackedSize: 60, PackedSum: sum},
		&events.ObjectStored{ObjectID: obj1, Tier: "tape1", TierKind: events.TierTape, Location: "VOL001/3",
			Size: 100, PackedSize: 60, PackedSum: sum, Tape: &events.TapePosition{Volume: "VOL001", TapeFile: 3, Block: 1234, Offset: 512}},
		&events.FileReleased{FileID: fidA, Path: "/d/a", ObjectID: obj1, Stat: stat(100, mt), Copies: 2},
		&events.RecallRequested{FileID: fidA, Path: "/d/a", ObjectID: obj1, Length: 1, Reason: events.RecallAccess},
		&events.RecallCompleted{FileID: fidA, Path: "/d/a", ObjectID: obj1, Bytes: 100, SourceTier: "disk"},
		&events.FileModified{FileID: fidA, Path: "/d/a", ObjectID: obj1, Stat: stat(200, mt+1)},
		&events.FileSelected{FileID: fidA, Path: "/d/a", Root: "/d", Stat: stat(200, mt+1), Reason: events.ReasonPolicy},
		&events.ObjectPacked{FileID: fidA, Path: "/d/a", ObjectID: obj2, Stat: stat(200, mt+1), Size: 200, PackedSize: 90,
			PackedSum: sum, FrameSize: 4 << 20, Frames: 1, Staging: "/s/y"}, // seq 10
		&events.ObjectCorrupt{ObjectID: obj1, Tier: "disk", Reason: "bad frame"},
		&events.FileSelected{FileID: fidB, Path: "/d/b", Root: "/d", Stat: stat(5, mt), Reason: events.ReasonManual}, // seq 12
	)
	dir := filepath.Join(t.TempDir(), "out")
	res, err := Parquet(context.Background(), c, dir)
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Seq: 12, Files: 3, Copies: 2}) {
		t.Fatalf("result %+v", res)
	}
	files := filepath.Join(dir, FilesName)
	got := query(t, `SELECT file_id, path, root, state, version, current, object_id, size, mode, uid, gid,
		mtime, inode, packed_path, packed_size, packed_sum, frames, archived_at, recalls, recall_failures, updated_at, seq
		FROM read_parquet(?) ORDER BY path, version`, files)
	ts := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	want := [][]any{
		{fidA, "/d/a", "/d", "archiving", uint32(1), false, obj1, int64(100), uint32(0o100640), uint32(7), uint32(8),
			time.Unix(0, mt).UTC(), uint64(99), "/d/a", int64(60), sum, int64(1), ts(2), uint64(1), uint64(0), ts(10), uint64(10)},
		{fidA, "/d/a", "/d", "archiving", uint32(2), true, obj2, int64(200), uint32(0o100640), uint32(7), uint32(8),
			time.Unix(0, mt+1).UTC(), uint64(99), "/d/a", int64(90), sum, int64(1), ts(10), uint64(1), uint64(0), ts(10), uint64(10)},
		{fidB, "/d/b", "/d", "archiving", nil, true, nil, int64(5), uint32(0o100640), uint32(7), uint32(8),
			time.Unix(0, mt).UTC(), uint64(99), nil, nil, nil, nil, nil, uint64(0), uint64(0), ts(12), uint64(12)},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("files.parquet:\n got %v\nwant %v", got, want)
	}
	got = query(t, `SELECT object_id, tier, tier_kind, location, size, packed_size, packed_sum, state, reason,
		stored_at, verified_at, tape_volume, tape_file, tape_block, tape_offset, seq
		FROM read_parquet(?) ORDER BY object_id, tier`, filepath.Join(dir, CopiesName))
	want = [][]any{
		{obj1, "disk", "directory", "/cold/objects/a1/" + obj1 + ".zst", int64(100), int64(60), sum, "corrupt", "bad frame",
			ts(3), nil, nil, nil, nil, nil, uint64(11)},
		{obj1, "tape1", "tape", "VOL001/3", int64(100), int64(60), sum, "good", nil,
			ts(4), nil, "VOL001", int64(3), int64(1234), int64(512), uint64(4)},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("copies.parquet:\n got %v\nwant %v", got, want)
	}
	meta := query(t, `SELECT decode(value) FROM parquet_kv_metadata(?) WHERE decode(key) = 'strata_seq'`, files)
	if len(meta) != 1 || meta[0][0] != "12" {
		t.Fatalf("strata_seq metadata %v", meta)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("export dir holds %d entries: %v", len(ents), ents)
	}
}

func TestParquetGenerated(t *testing.T) {
	n := 50_000
	if testing.Short() {
		n = 10_000
	}
	c := openCatalog(t)
	envs := catalogtest.Generate(n, 3, catalogtest.Options{Invalid: 0.01})
	for lo := 0; lo < len(envs); lo += 1000 {
		if err := c.Apply(envs[lo:min(lo+1000, len(envs))]); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	// A stale temporary file from a crashed export is replaced.
	if err := os.WriteFile(filepath.Join(dir, "."+FilesName+".tmp"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Parquet(context.Background(), c, dir)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := c.Stats()
	if res.Seq != uint64(n) || res.Copies != int(st.Copies+st.CorruptCopies) {
		t.Fatalf("result %+v, stats %+v", res, st)
	}
	files, copies := filepath.Join(dir, FilesName), filepath.Join(dir, CopiesName)
	row := query(t, `SELECT count(*), count(DISTINCT file_id), count(version), count(*) FILTER (WHERE current),
		count(DISTINCT (file_id, version)) FROM read_parquet(?)`, files)[0]
	if row[0] != int64(res.Files) || row[1] != int64(st.Files) || row[2] != int64(st.Versions) || row[3] != int64(st.Files) || row[4] != int64(res.Files) {
		t.Fatalf("files.parquet counts %v; result %+v stats %+v", row, res, st)
	}
	for _, s := range catalog.States() {
		r := query(t, `SELECT count(*) FROM read_parquet(?) WHERE current AND state = ?`, files, s.String())
		if r[0][0] != int64(st.ByState[s.String()].Files) {
			t.Errorf("state %s: %v current rows, %d files", s, r[0][0], st.ByState[s.String()].Files)
		}
	}
	r := query(t, `SELECT count(*) FILTER (WHERE state = 'good'), count(*) FILTER (WHERE state = 'corrupt'),
		count(*) FILTER (WHERE tier_kind = 'tape' AND tape_block IS NULL) FROM read_parquet(?)`, copies)[0]
	if r[0] != int64(st.Copies) || r[1] != int64(st.CorruptCopies) || r[2] != int64(0) {
		t.Fatalf("copies.parquet counts %v, stats %+v", r, st)
	}
	// Spot-check rows against the catalog.
	for _, env := range envs[n/2 : n/2+200] {
		if env.Type != events.KindObjectPacked.Type() {
			continue
		}
		ev, err := events.DecodeData(env.Type, env.Data)
		if err != nil {
			continue
		}
		p := ev.(*events.ObjectPacked)
		vs, err := c.Versions(p.FileID)
		if err != nil {
			t.Fatal(err)
		}
		f, _ := c.File(p.FileID)
		for _, v := range vs {
			got := query(t, `SELECT object_id, size, current, path, archived_at FROM read_parquet(?) WHERE file_id = ? AND version = ?`,
				files, p.FileID, v.Number)
			want := []any{v.ObjectID, v.Stat.Size, v.Number == f.Version, f.Path, v.ArchivedAt}
			if len(got) != 1 || fmt.Sprint(got[0]) != fmt.Sprint(want) {
				t.Fatalf("file %s version %d: %v, want %v", p.FileID, v.Number, got, want)
			}
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("export dir holds %v", ents)
	}
}

// TestRestoreRecipe runs the restore recipe of docs/EXPORT.md verbatim
// against real objects on a directory tier and checks every restored byte.
func TestRestoreRecipe(t *testing.T) {
	for _, tool := range []string{"bash", "zstd", "b3sum"} {
		stratatest.NeedTool(t, tool)
	}
	doc, err := os.ReadFile("../../docs/EXPORT.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- restore:begin -->\\s*```sh\\n(.*?)```\\s*<!-- restore:end -->").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/EXPORT.md has no restore recipe between the restore:begin/end markers")
	}
	script := string(m[1])

	work := t.TempDir()
	cold := filepath.Join(work, "cold")
	c := openCatalog(t)
	r := rand.New(rand.NewPCG(1, 2))
	type file struct {
		path    string
		content []byte
	}
	var want []file
	var evs []events.Event
	for i := range 12 {
		content := make([]byte, r.IntN(300_000))
		for j := range content {
			content[j] = byte(r.IntN(7)) // compressible
		}
		if i == 3 {
			content = want[0].content // identical content shares an object
		}
		src := filepath.Join(work, "src"+strconv.Itoa(i))
		if err := os.WriteFile(src, content, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("b3sum", "--no-names", src).Output()
		if err != nil {
			t.Fatal(err)
		}
		obj := strings.TrimSpace(string(out))
		loc := filepath.Join(cold, "objects", obj[:2], obj+".zst")
		os.MkdirAll(filepath.Dir(loc), 0o755)
		if out, err := exec.Command("zstd", "-q", "-f", "-o", loc, src).CombinedOutput(); err != nil {
			t.Fatalf("zstd: %v: %s", err, out)
		}
		fi, _ := os.Stat(loc)
		id := fmt.Sprintf("%032x", i+1)
		p := fmt.Sprintf("/data/dir%d/file %d.bin", i%3, i) // a space, to keep the script honest
		st := events.FileStat{Size: int64(len(content)), Mode: 0o100644, Inode: uint64(i + 10), MtimeNS: 1}
		evs = append(evs,
			&events.FileSelected{FileID: id, Path: p, Root: "/data", Stat: st, Reason: events.ReasonPolicy},
			&events.ObjectPacked{FileID: id, Path: p, ObjectID: obj, Stat: st, Size: st.Size, PackedSize: fi.Size(),
				PackedSum: sum, FrameSize: 4 << 20, Frames: 1, Staging: "/staging/" + obj},
			&events.ObjectStored{ObjectID: obj, Tier: "disk", TierKind: events.TierDirectory, Location: loc,
				Size: st.Size, PackedSize: fi.Size(), PackedSum: sum},
			&events.FileReleased{FileID: id, Path: p, ObjectID: obj, Stat: st, Copies: 1})
		if i == 5 {
			evs = append(evs, &events.FileDeleted{FileID: id, Path: p}) // not restored
			continue
		}
		want = append(want, file{p, content})
	}
	apply(t, c, evs...)
	exp := filepath.Join(work, "export")
	if _, err := Parquet(context.Background(), c, exp); err != nil {
		t.Fatal(err)
	}

	shell := "set -euo pipefail\n"
	if _, err := exec.LookPath("duckdb"); err != nil {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		shell += fmt.Sprintf("duckdb() { STRATA_TEST_DUCKDB_CLI=1 %q \"$@\"; }\n", self)
	}
	cmd := exec.Command("bash", "-c", shell+script)
	cmd.Dir = exp
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("restore recipe: %v\n%s", err, out)
	}
	for _, f := range want {
		got, err := os.ReadFile(filepath.Join(exp, "restored", f.path))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, f.content) {
			t.Fatalf("%s: restored %d bytes differ from the original %d", f.path, len(got), len(f.content))
		}
	}
	var restored int
	filepath.Walk(filepath.Join(exp, "restored"), func(_ string, fi os.FileInfo, _ error) error {
		if fi != nil && fi.Mode().IsRegular() {
			restored++
		}
		return nil
	})
	if restored != len(want) {
		t.Fatalf("restored %d files, want %d (a deleted file must not come back)", restored, len(want))
	}

	// A corrupted object: the recipe's b3sum check fails loudly.
	var victim string
	filepath.Walk(cold, func(p string, fi os.FileInfo, _ error) error {
		if victim == "" && strings.HasSuffix(p, ".zst") {
			victim = p
		}
		return nil
	})
	other := filepath.Join(work, "other.zst")
	exec.Command("bash", "-c", "head -c 1000 /dev/zero | zstd -q -o "+other).Run()
	if err := os.Rename(other, victim); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(exp, "restored"))
	cmd = exec.Command("bash", "-c", shell+script)
	cmd.Dir = exp
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "FAILED") {
		t.Fatalf("recipe with a wrong object: err %v, output:\n%s", err, out)
	}
}
