package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// The crash matrix (docs/CRASH-MATRIX.md): every failpoint that any
// package defines (failpoint.All, so a new one joins by itself) × every
// filesystem of stratatest.FSTypes. Each cell kills a real `strata run`
// (or `strata replay`) at its failpoint with SIGKILL, restarts it without
// failpoints, lets the pipeline settle, and checks that every file reads
// back (with cat) exactly as written, that `strata replay --verify`
// passes, that no file is a stub without a good copy on the directory
// tier (restored with the zstd CLI), that nothing went to the dead
// letters and that the tier holds no stray temporary file.
//
// `go test` runs a sample of crashSampleCells cells, chosen by a seed that
// is printed and can be set with STRATA_CRASH_SEED; STRATA_CRASH_ALL=1
// runs every cell (go tool task crash), STRATA_CRASH_ONLY=<regexp> the
// cells whose "<failpoint>/<fs>" name matches, and STRATA_CRASH_WRITE=1
// records the result in docs/CRASH-MATRIX.md.

// crashSampleCells is the size of the sample a plain go test runs.
const crashSampleCells = 4

// crashScenario is the work that reaches the failpoints of one stage.
type crashScenario int

const (
	scenarioArchive crashScenario = iota // strata archive of the hot tree: scan, compress, store, tape, release
	scenarioRecall                       // cat of every stub: interceptor fill
	scenarioPrune                        // a deleted file's objects pruned
	scenarioScrub                        // a scrub that finds a corrupt copy and repairs it
	scenarioReplay                       // an offline strata replay
)

func (s crashScenario) String() string {
	return [...]string{"archive", "recall by cat", "prune --apply", "scrub (a corrupt copy)", "offline replay"}[s]
}

// crashStages maps every stage that defines failpoints to the work that
// reaches them. TestCrashMatrixCoversEveryFailpoint fails for a stage
// missing here.
var crashStages = map[string]crashScenario{
	"scan":        scenarioArchive,
	"compress":    scenarioArchive,
	"store":       scenarioArchive,
	"tape":        scenarioArchive,
	"release":     scenarioArchive,
	"interceptor": scenarioRecall,
	"prune":       scenarioPrune,
	"scrub":       scenarioScrub,
	"replay":      scenarioReplay,
}

// crashElsewhere are the failpoints the matrix's workloads cannot reach,
// with the test that kills the daemon there instead.
var crashElsewhere = map[string]string{
	interceptor.FailStoreFaulted: "needs a store into a stub on a full disk: workers/interceptor TestCrashDiskFull",
}

// crashCell is one failpoint on one filesystem.
type crashCell struct {
	point failpoint.Point
	fs    string
}

func (c crashCell) name() string { return c.point.Name + "/" + c.fs }

// crashResult is the outcome of a cell.
type crashResult struct {
	status string // pass, FAIL, n/a
	took   time.Duration
	note   string
}

func allCrashCells() []crashCell {
	var cells []crashCell
	for _, p := range failpoint.All() {
		for _, fs := range stratatest.FSTypes {
			cells = append(cells, crashCell{p, fs})
		}
	}
	return cells
}

// TestCrashMatrixCoversEveryFailpoint: every failpoint defined in the
// source (a failpoint.Define call in a non-test file) is linked into the
// binary, and its stage has a workload in the matrix, so a new failpoint
// cannot be left out of it.
func TestCrashMatrixCoversEveryFailpoint(t *testing.T) {
	inSource := map[string]string{}
	define := regexp.MustCompile(`failpoint\.Define\(\s*"([^"]+)"`)
	err := filepath.WalkDir("../..", func(p string, de os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() && (de.Name() == ".git" || de.Name() == "testdata" || de.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if de.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range define.FindAllSubmatch(b, -1) {
			inSource[string(m[1])] = p
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	linked := map[string]bool{}
	for _, p := range failpoint.All() {
		linked[p.Name] = true
		if _, ok := crashStages[p.Stage]; !ok {
			t.Errorf("failpoint %s: stage %q has no workload in crashStages (cmd/strata/crashmatrix_test.go)", p.Name, p.Stage)
		}
	}
	for name, file := range inSource {
		if !linked[name] {
			t.Errorf("failpoint %s (defined in %s) is not linked into strata: the crash matrix would miss it", name, file)
		}
	}
	if len(inSource) < 20 {
		t.Fatalf("found only %d failpoint.Define calls in the source: %v", len(inSource), inSource)
	}
	for name := range crashElsewhere {
		if !linked[name] {
			t.Errorf("crashElsewhere names %s, which no package defines", name)
		}
	}
}

// TestCrashMatrix runs the crash matrix (a sample, or all of it).
func TestCrashMatrix(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, tool := range []string{"zstd", "cat", "mkfs.xfs", "mkfs.ext4"} {
		stratatest.NeedTool(t, tool)
	}
	cells := allCrashCells()
	all := os.Getenv("STRATA_CRASH_ALL") == "1"
	var chosen []crashCell
	label := ""
	switch only := os.Getenv("STRATA_CRASH_ONLY"); {
	case only != "":
		re, err := regexp.Compile(only)
		if err != nil {
			t.Fatalf("STRATA_CRASH_ONLY=%q: %v", only, err)
		}
		for _, c := range cells {
			if re.MatchString(c.name()) {
				chosen = append(chosen, c)
			}
		}
		label = fmt.Sprintf("cells matching STRATA_CRASH_ONLY=%q", only)
	case all:
		chosen = cells
		label = "every cell (STRATA_CRASH_ALL=1)"
	default:
		seed := uint64(time.Now().UnixNano())
		if s := os.Getenv("STRATA_CRASH_SEED"); s != "" {
			var err error
			if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
				t.Fatalf("STRATA_CRASH_SEED=%q: want an unsigned integer", s)
			}
		}
		r := rand.New(rand.NewPCG(seed, 0x5eed))
		perm := r.Perm(len(cells))
		for _, i := range perm[:min(crashSampleCells, len(cells))] {
			chosen = append(chosen, cells[i])
		}
		label = fmt.Sprintf("a sample of %d cells, STRATA_CRASH_SEED=%d", len(chosen), seed)
	}
	t.Logf("crash matrix: %s (of %d cells)", label, len(cells))
	if len(chosen) == 0 {
		t.Fatalf("no cell chosen (%s)", label)
	}
	bin := buildStrata(t)

	// A killed daemon's message is redelivered after the ack wait (30 s):
	// cells run side by side, at most STRATA_CRASH_PARALLEL at once.
	par := 4
	if s := os.Getenv("STRATA_CRASH_PARALLEL"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			par = n
		}
	}
	var (
		mu      sync.Mutex
		results = map[string]crashResult{}
		wg      sync.WaitGroup
		sem     = make(chan struct{}, par)
	)
	for i, c := range chosen {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			start := time.Now()
			res := crashResult{status: "pass"}
			t.Run(c.name(), func(t *testing.T) {
				if why, ok := crashElsewhere[c.point.Name]; ok {
					res = crashResult{status: "n/a", note: why}
					t.Skipf("%s: not reached by the matrix's workloads (%s)", c.point.Name, why)
				}
				t.Cleanup(func() {
					if t.Failed() {
						res.status = "FAIL"
					}
				})
				runCrashCell(t, bin, c, uint64(1000+i))
			})
			res.took = time.Since(start).Round(time.Second)
			mu.Lock()
			results[c.name()] = res
			mu.Unlock()
		}()
	}
	wg.Wait()
	table := crashTable(cells, results)
	t.Logf("crash matrix (%s):\n%s", label, table)
	if os.Getenv("STRATA_CRASH_WRITE") == "1" {
		if err := writeCrashMatrix("../../docs/CRASH-MATRIX.md", label, len(chosen) == len(cells), table); err != nil {
			t.Fatal(err)
		}
	}
}

// crashTable renders the matrix as Markdown: one row per failpoint, one
// column per filesystem ("–": not run).
func crashTable(cells []crashCell, results map[string]crashResult) string {
	var b strings.Builder
	b.WriteString("| failpoint | work that reaches it | what is durable when it fires |")
	for _, fs := range stratatest.FSTypes {
		b.WriteString(" " + fs + " |")
	}
	b.WriteString("\n|---|---|---|")
	for range stratatest.FSTypes {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	seen := map[string]bool{}
	for _, c := range cells {
		if seen[c.point.Name] {
			continue
		}
		seen[c.point.Name] = true
		fmt.Fprintf(&b, "| `%s` | %s | %s |", c.point.Name, crashStages[c.point.Stage], c.point.Doc)
		for _, fs := range stratatest.FSTypes {
			r, ok := results[c.point.Name+"/"+fs]
			switch {
			case !ok:
				b.WriteString(" – |")
			case r.status == "n/a":
				b.WriteString(" n/a¹ |")
			default:
				fmt.Fprintf(&b, " %s (%s) |", r.status, r.took)
			}
		}
		b.WriteString("\n")
	}
	var notes []string
	for name, why := range crashElsewhere {
		notes = append(notes, fmt.Sprintf("`%s`: %s", name, why))
	}
	slices.Sort(notes)
	if len(notes) > 0 {
		b.WriteString("\n¹ not reached by the matrix's workloads: " + strings.Join(notes, "; ") + ".\n")
	}
	return b.String()
}

// writeCrashMatrix replaces the generated part of the doc.
func writeCrashMatrix(path, label string, complete bool, table string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	const begin, end = "<!-- crash-matrix:begin -->", "<!-- crash-matrix:end -->"
	i, j := bytes.Index(doc, []byte(begin)), bytes.Index(doc, []byte(end))
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s … %s section to replace", path, begin, end)
	}
	kind := "Full run"
	if !complete {
		kind = "**Partial run** (not every cell)"
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	gen := fmt.Sprintf("%s\n%s, %s, generated by `TestCrashMatrix` on %s (kernel %s).\n\n%s%s",
		begin, kind, label, time.Now().UTC().Format("2006-01-02 15:04 UTC"), strings.TrimSpace(string(kernel)), table, end)
	out := append(append(append([]byte{}, doc[:i]...), gen...), doc[j+len(end):]...)
	return os.WriteFile(path, out, 0o644)
}

// crashEnv is one cell's hot tree, tiers and daemon configuration.
type crashEnv struct {
	bin, hot, data, cold, lib, config string
	files                             map[string][]byte // path → original bytes (files that must survive)
	gone                              string            // prune: the file deleted before the crash
}

func newCrashEnv(t *testing.T, bin string, c crashCell, seed uint64) *crashEnv {
	size := int64(64 << 20)
	if c.fs == "xfs" {
		size = 320 << 20 // mkfs.xfs refuses less than 300 MiB
	}
	e := &crashEnv{bin: bin, hot: stratatest.LoopMount(t, c.fs, size), data: t.TempDir(), lib: t.TempDir()}
	e.cold = filepath.Join(e.data, "cold")
	e.files = crashFiles(t, e.hot, seed)
	if out, errs, code := cli(t, "tape", "label", "emulator:"+e.lib, "--volume", "T00001", "--pool", "main", "--capacity", "1GB"); code != 0 {
		t.Fatalf("tape label: %s %s", out, errs)
	}
	scenario := crashStages[c.point.Stage]
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "[[hot]]\npath = %q\n\n", e.hot)
	fmt.Fprintf(&cfg, "[[tier]]\nname = \"cold\"\nkind = \"directory\"\npath = %q\n\n", e.cold)
	fmt.Fprintf(&cfg, "[[tier]]\nname = \"lto\"\nkind = \"tape\"\ndevice = %q\npool = \"main\"\nbundle_age = \"1s\"\n\n", "emulator:"+e.lib)
	if c.point.Stage == "tape" {
		// Release waits for the tape copy: the tape's failpoints then
		// stand between the file and its release.
		cfg.WriteString("[release]\nfrom = [\"lto\"]\n\n")
	}
	if scenario == scenarioPrune {
		// A stub is reported deleted once two walks in a row miss it:
		// scan every second.
		cfg.WriteString("[retention]\nkeep_deleted = \"1s\"\n\n[policy]\nscan_interval = \"1s\"\n\n")
		e.gone = filepath.Join(e.hot, "gone.bin")
		random, _ := contentGen(seed, 99)
		if err := os.WriteFile(e.gone, random(200<<10), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	e.config = filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(e.config, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *crashEnv) start(t *testing.T, failpoints string) *strataProc {
	t.Helper()
	return startStrataArgs(t, e.bin, e.data, failpoints, "--config", e.config)
}

// command runs the strata CLI as a subprocess (not in-process: the
// failpoint may kill it, or the daemon it waits for may die).
func (e *crashEnv) command(failpoints string, args ...string) *exec.Cmd {
	cmd := exec.Command(e.bin, append(args[:1:1], append([]string{"--data", e.data}, args[1:]...)...)...)
	cmd.Env = strataEnv(failpoints)
	return cmd
}

// archiveAll archives the hot tree until every file is released.
func (e *crashEnv) archiveAll(t *testing.T) {
	t.Helper()
	want := maps2(e.files, e.gone)
	for attempt := 1; ; attempt++ {
		var sum archiveSummary
		cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", e.data, e.hot)
		var ls scanner.LsReply
		cliJSON(t, &ls, "ls", "--json", "--data", e.data, e.hot)
		waiting := notReleased(ls, want)
		if len(waiting) == 0 {
			return
		}
		// The only acceptable skip (see the crash matrix): a file
		// open elsewhere while the compressor or releaser wanted it.
		for _, s := range sum.Skipped {
			if !strings.Contains(s.Reason, "open by another process") && !strings.Contains(s.Reason, "changed while being opened") {
				t.Errorf("archive skipped %s: %s", s.Path, s.Reason)
			}
		}
		if attempt == 4 {
			t.Fatalf("after %d archives, not released: %v", attempt, waiting)
		}
		waitFor(t, 100*time.Second, func() error { return stagesIdle(e.data) })
	}
}

// maps2 is files plus the path extra (if any), for notReleased.
func maps2(files map[string][]byte, extra string) map[string][]byte {
	out := map[string][]byte{}
	for p, b := range files {
		out[p] = b
	}
	if extra != "" {
		out[extra] = nil
	}
	return out
}

// stop stops a daemon with SIGTERM and waits for it.
func (e *crashEnv) stop(t *testing.T, p *strataProc) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if st := p.wait(t, 30*time.Second); !st.Success() {
		t.Fatalf("daemon stopped with %v\n%s", st, p.logs())
	}
}

// mustDieAt waits for the process to kill itself at point.
func mustDieAt(t *testing.T, what string, done <-chan struct{}, state func() *os.ProcessState, logs func() string, point string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("%s still running 90s after the work started: failpoint %s never reached\n%s", what, point, logs())
	}
	ws, ok := state().Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("%s with failpoint %s ended with %v, want killed by SIGKILL\n%s", what, point, state(), logs())
	}
	if !strings.Contains(logs(), "failpoint "+point+": killing process") {
		t.Fatalf("%s died but not at failpoint %s:\n%s", what, point, logs())
	}
}

// corruptCopy flips a byte in the middle of the directory tier's copy of
// the object of want.
func (e *crashEnv) corruptCopy(t *testing.T, want []byte) {
	t.Helper()
	oid := blake3Hex(want)
	obj := filepath.Join(e.cold, "objects", oid[:2], oid+".zst")
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(obj, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// catResult is what a real program read from a file.
type catResult struct {
	out []byte
	err error
}

func runCrashCell(t *testing.T, bin string, c crashCell, seed uint64) {
	e := newCrashEnv(t, bin, c, seed)
	point := c.point.Name
	var corrupt string // scrub: the file whose directory copy is damaged
	var readers map[string]chan catResult
	var d1 *strataProc

	// 1. Prepare, arm the failpoint and drive the work that reaches it.
	switch crashStages[c.point.Stage] {
	case scenarioArchive:
		d1 = e.start(t, point)
		arch := e.command("", "archive", e.hot)
		if err := arch.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { arch.Process.Kill(); arch.Wait() })
		mustDieAt(t, "daemon", d1.done, func() *os.ProcessState { return d1.cmd.ProcessState }, d1.logs, point)
		arch.Process.Kill()

	case scenarioRecall:
		d0 := e.start(t, "")
		e.archiveAll(t)
		e.stop(t, d0)
		d1 = e.start(t, point)
		readers = map[string]chan catResult{}
		for p := range e.files {
			ch := make(chan catResult, 1)
			readers[p] = ch
			cmd := exec.Command("cat", p)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() {
				err := cmd.Wait()
				if err != nil {
					err = fmt.Errorf("%w: %s", err, errb.String())
				}
				ch <- catResult{out.Bytes(), err}
			}()
			// A reader held on a stub with no daemon: only SIGKILL ends it.
			t.Cleanup(func() { cmd.Process.Kill() })
		}
		mustDieAt(t, "daemon", d1.done, func() *os.ProcessState { return d1.cmd.ProcessState }, d1.logs, point)

	case scenarioPrune:
		d0 := e.start(t, "")
		e.archiveAll(t)
		e.stop(t, d0)
		if err := os.Remove(e.gone); err != nil {
			t.Fatal(err)
		}
		// The scan at start finds the stub gone (file.deleted); once
		// keep_deleted (1 s) has passed, prune lets its object go.
		d1 = e.start(t, point)
		waitFor(t, 60*time.Second, func() error {
			var rep struct {
				Objects []struct{ ObjectID string } `json:"objects"`
			}
			if out, errs, code := cli(t, "prune", "--json", "--data", e.data); code != 0 {
				return fmt.Errorf("prune (dry run): exit %d %s%s", code, out, errs)
			} else if err := json.Unmarshal([]byte(out), &rep); err != nil {
				return err
			}
			if len(rep.Objects) == 0 {
				return fmt.Errorf("prune (dry run) lists nothing yet")
			}
			return nil
		})
		pr := e.command("", "prune", "--apply")
		if err := pr.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pr.Process.Kill(); pr.Wait() })
		mustDieAt(t, "daemon", d1.done, func() *os.ProcessState { return d1.cmd.ProcessState }, d1.logs, point)

	case scenarioScrub:
		d0 := e.start(t, "")
		e.archiveAll(t)
		// Wait for the tape copies too: the repair reads one.
		waitFor(t, 60*time.Second, func() error { return e.allCopies(t, "cold", "lto") })
		e.stop(t, d0)
		for p := range e.files {
			if strings.HasSuffix(p, "b.bin") {
				corrupt = p
			}
		}
		e.corruptCopy(t, e.files[corrupt])
		d1 = e.start(t, point)
		sc := e.command("", "scrub", "--rate", "0")
		if err := sc.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sc.Process.Kill(); sc.Wait() })
		mustDieAt(t, "daemon", d1.done, func() *os.ProcessState { return d1.cmd.ProcessState }, d1.logs, point)

	case scenarioReplay:
		d0 := e.start(t, "")
		e.archiveAll(t)
		e.stop(t, d0)
		d1 = d0 // for its log
		rp := e.command(point, "replay")
		var out bytes.Buffer
		rp.Stdout, rp.Stderr = &out, &out
		if err := rp.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { rp.Wait(); close(done) }()
		mustDieAt(t, "strata replay", done, func() *os.ProcessState { return rp.ProcessState }, out.String, point)
	}

	// 2. At the moment of the crash: a file is either untouched (its
	// bytes, read without any daemon, equal the original) or a stub whose
	// directory copy restores to the original.
	released := 0
	for p, want := range e.files {
		info, err := stub.ReadPath(p)
		switch {
		case err == nil && info.State == stub.Released:
			released++
			if p != corrupt {
				checkTierCopy(t, e.cold, p, info.ObjectID, want)
			}
		case err == nil && info.State != stub.Released, isNotManaged(err):
			if readers != nil {
				continue // being recalled: read through the interceptor below
			}
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("after the crash, %s (not a stub) differs from the original: %v", p, err)
			}
		default:
			t.Errorf("after the crash, xattrs of %s: %v", p, err)
		}
	}
	t.Logf("crash at %s: %d of %d files are stubs", point, released, len(e.files))

	// 3. Restart without failpoints and let the pipeline settle.
	d2 := e.start(t, "")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log before the crash:\n%s\nafter:\n%s", d1.logs(), d2.logs())
		}
	})
	// Readers held through the crash: the original bytes or an error
	// (EIO for an event the dead daemon read but had not journaled),
	// never other bytes.
	for p, ch := range readers {
		select {
		case r := <-ch:
			switch {
			case r.err == nil && !bytes.Equal(r.out, e.files[p]):
				t.Errorf("cat %s held through the crash: exit 0 with %d bytes that differ from the original %d", p, len(r.out), len(e.files[p]))
			case r.err != nil && !strings.Contains(r.err.Error(), "Input/output error"):
				t.Errorf("cat %s held through the crash: %v (want the bytes, or EIO)", p, r.err)
			case r.err != nil:
				t.Logf("cat %s held through the crash: %v (an error, not wrong bytes)", p, r.err)
			}
		case <-time.After(90 * time.Second):
			t.Errorf("cat %s still held 90s after the restart", p)
		}
	}
	waitFor(t, 100*time.Second, func() error { return stagesIdle(e.data) })
	switch crashStages[c.point.Stage] {
	case scenarioArchive:
		e.archiveAll(t)
	case scenarioPrune:
		if out, errs, code := cli(t, "prune", "--apply", "--data", e.data); code != 0 {
			t.Errorf("prune --apply after the restart: exit %d %s%s", code, out, errs)
		}
	case scenarioScrub:
		if out, errs, code := cli(t, "scrub", "--rate", "0", "--data", e.data); code != 0 {
			// The first scrub after the restart repairs what the killed
			// one left; it reports the damage it found (non-zero exit).
			t.Logf("scrub after the restart: exit %d %s%s", code, out, errs)
		}
		if out, errs, code := cli(t, "scrub", "--rate", "0", "--data", e.data); code != 0 {
			t.Errorf("second scrub after the restart: exit %d %s%s", code, out, errs)
		}
	}
	e.checkSettled(t, d2)
}

func isNotManaged(err error) bool {
	return err != nil && strings.Contains(err.Error(), stub.ErrNotManaged.Error())
}

// allCopies returns nil once every file has a copy on each tier.
func (e *crashEnv) allCopies(t *testing.T, tiers ...string) error {
	var ls scanner.LsReply
	cliJSON(t, &ls, "ls", "--json", "--data", e.data, e.hot)
	for _, f := range ls.Files {
		for _, tn := range tiers {
			if !slices.Contains(f.Copies, tn) {
				return fmt.Errorf("%s: copies %v, want %v", f.Path, f.Copies, tiers)
			}
		}
	}
	return nil
}

// checkSettled checks a settled pipeline: every file reads back with cat
// exactly as written, every stub has a good copy on the directory tier,
// the catalog equals a replay of the log, no dead letter, no stray file
// in the tier.
func (e *crashEnv) checkSettled(t *testing.T, d *strataProc) {
	t.Helper()
	for p, want := range e.files {
		info, err := stub.ReadPath(p)
		if err == nil && info.State == stub.Released {
			checkTierCopy(t, e.cold, p, info.ObjectID, want)
		}
	}
	var ls scanner.LsReply
	cliJSON(t, &ls, "ls", "--json", "--data", e.data, e.hot)
	for _, f := range ls.Files {
		if _, ok := e.files[f.Path]; ok && f.State == "released" && !slices.Contains(f.Copies, "cold") {
			t.Errorf("ls %s: released with copies %v, want one on cold", f.Path, f.Copies)
		}
	}
	for p, want := range e.files {
		got, err := exec.Command("cat", p).Output()
		if err != nil {
			t.Errorf("cat %s: %v", p, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("cat %s: %d bytes differ from the original %d bytes", p, len(got), len(want))
		}
	}
	if out, errs, code := cli(t, "replay", "--verify", "--data", e.data); code != 0 {
		t.Errorf("replay --verify: exit %d: %s%s", code, out, errs)
	}
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", e.data)
	if st.Stream.DeadLetters != 0 {
		t.Errorf("dead letters after recovery: %+v", st.Stream)
	}
	checkTierClean(t, e.cold)
	if e.gone != "" {
		if _, err := os.Stat(e.gone); err == nil {
			t.Errorf("%s, deleted, is back", e.gone)
		}
	}
}
