package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
	"github.com/strata-hsm/strata/workers/tier/faulttest"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// The soak (docs/SOAK.md, issue 16 item 5): a real `strata run` on a
// loop-mounted ext4 or XFS hot tree, with a directory tier and an rclone
// webdav tier reached through a fault-injecting proxy, driven for a given
// time by a seeded random loop of what users and operators do: create
// files, archive and release them, read stubs with real programs (cat,
// sha256sum, dd with skip, tail, cp, a program that mmaps), modify hot
// files and stubs (append, overwrite, truncate, replace), rename, delete,
// restore (a live file, a deleted one by its id), recall, release again,
// scrub, tier outages (500s, resets, hangs, flipped and cut bodies) and
// daemon restarts (SIGTERM, kill -9, with programs held on stubs across
// the kill, work done while it is down).
//
// The test keeps a model: every file's bytes. After every step it checks
// every file against it — the tree holds exactly the model's files, with
// their sizes; a file that is not a stub reads back (in-process) as the
// model; a stub that was not written since its release names the object
// that is the BLAKE3 of the model and has a copy on the directory tier —
// and the programs of the step must print the model's bytes or fail with
// EIO where an error is allowed (a program held through a kill -9); exit 0
// with other bytes is never allowed. At the end, with the faults off, it
// archives everything, cats every file, restores every stub's object with
// the zstd CLI, runs `strata replay --verify` and checks that nothing went
// to the dead letters.
//
// STRATA_SOAK sets the duration (e.g. 30m). Unset, the soak runs 3 minutes
// under STRATA_REQUIRE_ALL=1 (CI) and 20 seconds otherwise, so a plain
// go test stays quick. STRATA_SOAK_SEED replays a run (same choices; the
// timing of a real daemon still differs), STRATA_SOAK_FS picks ext4 or
// xfs (default: by the seed).

// Soak defaults.
const (
	soakCIDuration    = 3 * time.Minute
	soakShortDuration = 20 * time.Second
	soakMaxFiles      = 40
	soakMaxBytes      = 120 << 20 // the model's total size, well under the hot tree's
)

// soakFile is one file of the model.
type soakFile struct {
	data []byte
	sum  [32]byte   // BLAKE3 of data
	hist [][32]byte // every content it had, oldest first (restore gives one)
}

func (f *soakFile) set(b []byte) {
	f.data = b
	f.sum = blake3.Sum256(b)
	f.hist = append(f.hist, f.sum)
}

// soak is the state of one run.
type soak struct {
	t                       *testing.T
	r                       *rand.Rand
	seed                    uint64
	bin, helper             string
	hot, data, cold, config string
	logPath                 string
	proxy                   *faulttest.Proxy
	daemon                  *exec.Cmd
	done                    chan struct{}
	starts                  int
	files                   map[string]*soakFile
	deleted                 map[string][][32]byte // file id → contents of a deleted archived file
	fault                   string                // "" or the active tier fault
	step                    int
	steps                   []string
	counts                  map[string]int
	nextName                int
	random, text            func(n int) []byte
	started                 time.Time
	readsOK, readsEIO       int
}

func soakDuration(t *testing.T) time.Duration {
	if s := os.Getenv("STRATA_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("STRATA_SOAK=%q: want a duration such as 3m or 1h", s)
		}
		return d
	}
	if stratatest.RequireAll() {
		return soakCIDuration
	}
	return soakShortDuration
}

// TestSoak runs the soak (see above).
func TestSoak(t *testing.T) {
	stratatest.NeedRoot(t)
	for _, tool := range []string{"zstd", "cat", "sha256sum", "dd", "tail", "cp", "rclone", "mkfs.ext4", "mkfs.xfs"} {
		stratatest.NeedTool(t, tool)
	}
	dur := soakDuration(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("STRATA_SOAK_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("STRATA_SOAK_SEED=%q: want an unsigned integer", s)
		}
	}
	fsType := stratatest.FSTypes[seed%uint64(len(stratatest.FSTypes))]
	if s := os.Getenv("STRATA_SOAK_FS"); s != "" {
		fsType = s
	}
	t.Logf("soak: %s on %s, STRATA_SOAK_SEED=%d", dur, fsType, seed)

	s := newSoak(t, seed, fsType)
	t.Cleanup(func() {
		if t.Failed() {
			s.report()
		}
	})
	s.start()
	for i := 0; i < 6; i++ {
		s.create()
	}
	s.check()
	deadline := s.started.Add(dur)
	for time.Now().Before(deadline) && !t.Failed() {
		s.randomStep()
		if t.Failed() {
			break
		}
		s.check()
	}
	if t.Failed() {
		return
	}
	s.settle()
	t.Logf("soak: %d steps in %s, STRATA_SOAK_SEED=%d, %s: %s; reads %d right, %d EIO (all held through a kill -9); daemon starts %d",
		s.step, time.Since(s.started).Round(time.Second), seed, fsType, s.summary(), s.readsOK, s.readsEIO, s.starts)
}

func newSoak(t *testing.T, seed uint64, fsType string) *soak {
	size := int64(256 << 20)
	if fsType == "xfs" {
		size = 320 << 20
	}
	s := &soak{t: t, seed: seed, r: rand.New(rand.NewPCG(seed, 0x50a6)),
		files: map[string]*soakFile{}, deleted: map[string][][32]byte{}, counts: map[string]int{}}
	s.random, s.text = contentGen(seed, 0x50a7)
	s.bin = buildStrata(t)
	s.helper = filepath.Join(t.TempDir(), "mmap-helper")
	if out, err := exec.Command("go", "build", "-o", s.helper, "../../workers/interceptor/testdata/helper").CombinedOutput(); err != nil {
		t.Fatalf("build the mmap helper: %v\n%s", err, out)
	}
	s.hot = stratatest.LoopMount(t, fsType, size)
	s.data = t.TempDir()
	s.cold = filepath.Join(s.data, "cold")
	srv := tiertest.StartRclone(t, "webdav")
	s.proxy = faulttest.Start(t, srv.Addr)
	logf, err := os.CreateTemp(t.TempDir(), "daemon-*.log")
	if err != nil {
		t.Fatal(err)
	}
	logf.Close()
	s.logPath = logf.Name()

	// The webdav tier is cheaper, so recall tries it first and falls over
	// to the directory tier when it misbehaves; release counts only the
	// directory tier's copy, so an outage delays no release and a read
	// while the daemon runs has no excuse for EIO.
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "host = \"soak\"\n\n[[hot]]\npath = %q\n\n", s.hot)
	fmt.Fprintf(&cfg, "[[tier]]\nname = \"cold\"\nkind = \"directory\"\npath = %q\n\n", s.cold)
	fmt.Fprintf(&cfg, "[[tier]]\nname = \"dav\"\nkind = \"rclone\"\ncost = 5\nremote = \"dav:soak\"\n")
	fmt.Fprintf(&cfg, "env = { RCLONE_CONFIG = \"/dev/null\", RCLONE_CONFIG_DAV_TYPE = \"webdav\", RCLONE_CONFIG_DAV_URL = %q, "+
		"RCLONE_TIMEOUT = \"4s\", RCLONE_CONTIMEOUT = \"2s\", RCLONE_LOW_LEVEL_RETRIES = \"1\", RCLONE_RETRIES = \"1\" }\n\n", "http://"+s.proxy.Addr)
	cfg.WriteString("[release]\ncopies = 1\nfrom = [\"cold\"]\n\n")
	// Scans run all the time (moves, deletions, writes made while the
	// daemon was down) but never archive on their own.
	cfg.WriteString("[policy]\nscan_interval = \"3s\"\nmin_age = \"3650d\"\n\n")
	// Small enough that larger stubs are recalled by range and stay
	// partially resident (dd with skip, tail), which strata release frees.
	cfg.WriteString("[interceptor]\nwhole_file_below = \"1MiB\"\nfill_whole_below = \"4MiB\"\nstopped_grace = \"20s\"\n")
	s.config = filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(s.config, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopHolderOf(t, s.data) }) // after the daemon's stop below
	t.Cleanup(func() {
		if s.running() {
			s.daemon.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(30 * time.Second):
				s.daemon.Process.Kill()
				<-s.done
				t.Errorf("daemon did not stop on SIGTERM within 30s")
			}
		}
	})
	s.started = time.Now()
	return s
}

// logf records one line of the step log (printed on failure).
func (s *soak) logf(format string, args ...any) {
	line := fmt.Sprintf("[%7.1fs] step %d: ", time.Since(s.started).Seconds(), s.step) + fmt.Sprintf(format, args...)
	s.steps = append(s.steps, line)
	s.t.Log(line)
}

// failf fails the run with a message that names the seed.
func (s *soak) failf(format string, args ...any) {
	s.t.Helper()
	s.t.Errorf("soak (STRATA_SOAK_SEED=%d) step %d: %s", s.seed, s.step, fmt.Sprintf(format, args...))
}

func (s *soak) report() {
	n := len(s.steps)
	from := max(0, n-300)
	s.t.Logf("soak failed: STRATA_SOAK_SEED=%d; step log (last %d of %d):\n%s", s.seed, n-from, n, strings.Join(s.steps[from:], "\n"))
	if s.running() {
		// A goroutine dump of the daemon, for a stall.
		s.daemon.Process.Signal(syscall.SIGQUIT)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
		}
	}
	b, _ := os.ReadFile(s.logPath)
	s.t.Logf("daemon log (tail):\n%s", tail(string(b), 200))
	keep := filepath.Join(os.TempDir(), fmt.Sprintf("strata-soak-%d.log", s.seed))
	if err := os.WriteFile(keep, b, 0o600); err == nil {
		s.t.Logf("whole daemon log (every start): %s", keep)
	}
}

func (s *soak) summary() string {
	var ks []string
	for k, v := range s.counts {
		ks = append(ks, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// --- the daemon ---

func (s *soak) running() bool {
	if s.daemon == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// start starts `strata run` and waits until it answers.
func (s *soak) start() {
	s.t.Helper()
	s.starts++
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	fmt.Fprintf(logf, "===== soak: daemon start %d at step %d =====\n", s.starts, s.step)
	cmd := exec.Command(s.bin, "run", "--data", s.data, "--port", "-2", "--metrics", "127.0.0.1:0", "--config", s.config)
	cmd.Env = strataEnv("")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	logf.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.daemon, s.done = cmd, done
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			s.failf("daemon exited while starting: %v", cmd.ProcessState)
			s.t.FailNow()
		default:
		}
		// status probes every tier for up to 5 s: a hanging one makes it
		// answer that late.
		if err := request(context.Background(), s.data, "status", struct{}{}, nil, 10*time.Second); err == nil {
			return
		} else if time.Now().After(deadline) {
			s.failf("daemon does not answer 60s after its start: %v", err)
			s.t.FailNow()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop stops the daemon with SIGTERM (it must exit cleanly) or SIGKILL.
func (s *soak) stop(kill bool) {
	s.t.Helper()
	if kill {
		s.daemon.Process.Kill()
	} else {
		s.daemon.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		s.daemon.Process.Kill()
		<-s.done
		s.failf("daemon did not stop within 60s of SIGTERM")
		return
	}
	if !kill && !s.daemon.ProcessState.Success() {
		s.failf("daemon stopped by SIGTERM ended with %v", s.daemon.ProcessState)
	}
}

// strata runs the CLI as a subprocess with a time limit.
func (s *soak) strata(limit time.Duration, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, append(args[:1:1], append([]string{"--data", s.data}, args[1:]...)...)...)
	cmd.Env = strataEnv("")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		if ctx.Err() != nil {
			errb.WriteString(fmt.Sprintf(" (killed after %s)", limit))
		}
	}
	return out.String(), errb.String(), code
}

// --- choosing ---

func (s *soak) paths() []string {
	ps := make([]string, 0, len(s.files))
	for p := range s.files {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// pick returns a random file of the model for which ok holds ("" if none).
func (s *soak) pick(ok func(p string, info stub.Info, managed bool) bool) string {
	var cand []string
	for _, p := range s.paths() {
		info, err := stub.ReadPath(p)
		if ok == nil || ok(p, info, err == nil) {
			cand = append(cand, p)
		}
	}
	if len(cand) == 0 {
		return ""
	}
	return cand[s.r.IntN(len(cand))]
}

func isStub(_ string, info stub.Info, managed bool) bool {
	return managed && info.State == stub.Released
}

func notStub(p string, info stub.Info, managed bool) bool { return !isStub(p, info, managed) }

func (s *soak) size() int {
	switch x := s.r.IntN(100); {
	case x < 5:
		return s.r.IntN(16)
	case x < 40:
		return 16 + s.r.IntN(64<<10)
	case x < 75:
		return 64<<10 + s.r.IntN(2<<20)
	case x < 95:
		return 2<<20 + s.r.IntN(7<<20)
	default:
		return 9<<20 + s.r.IntN(11<<20)
	}
}

func (s *soak) content(n int) []byte {
	if s.r.IntN(2) == 0 {
		return s.random(n)
	}
	return s.text(n)
}

func (s *soak) total() int {
	n := 0
	for _, f := range s.files {
		n += len(f.data)
	}
	return n
}

func (s *soak) newPath() string {
	dirs := []string{"", "a", "a/b", "c", "c/d/e"}
	s.nextName++
	exts := []string{".bin", ".txt", ".dat", ""}
	return filepath.Join(s.hot, dirs[s.r.IntN(len(dirs))], fmt.Sprintf("f%04d%s", s.nextName, exts[s.r.IntN(len(exts))]))
}

// randomStep does one step, chosen by weight.
func (s *soak) randomStep() {
	s.step++
	type op struct {
		name   string
		weight int
		do     func()
	}
	ops := []op{
		{"create", 8, s.create},
		{"archive", 12, s.archive},
		{"archive-async", 4, s.archiveAsync},
		{"read", 20, s.read},
		{"parallel-read", 5, s.parallelRead},
		{"modify", 10, s.modify},
		{"rename", 5, s.rename},
		{"delete", 3, s.remove},
		{"restore", 4, s.restore},
		{"recall", 3, s.recall},
		{"release", 3, s.release},
		{"scrub", 1, s.scrub},
		{"outage", 5, s.outage},
		{"restart", 3, s.restart},
		{"kill", 4, s.kill},
		{"down-work", 2, s.downWork},
		{"check-all", 2, s.checkAll},
	}
	sum := 0
	for _, o := range ops {
		sum += o.weight
	}
	x := s.r.IntN(sum)
	for _, o := range ops {
		if x < o.weight {
			start := time.Now()
			o.do()
			s.counts[o.name]++
			if d := time.Since(start); d > 45*time.Second {
				s.logf("%s took %s", o.name, d.Round(time.Second))
			}
			return
		}
		x -= o.weight
	}
}

// --- steps ---

func (s *soak) create() {
	if len(s.files) >= soakMaxFiles || s.total() > soakMaxBytes {
		s.remove()
		return
	}
	p := s.newPath()
	b := s.content(s.size())
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		s.failf("create %s: %v", p, err)
		return
	}
	f := &soakFile{}
	f.set(b)
	s.files[p] = f
	s.logf("create %s (%d bytes)", s.rel(p), len(b))
}

func (s *soak) rel(p string) string {
	r, err := filepath.Rel(s.hot, p)
	if err != nil {
		return p
	}
	return r
}

// some returns a random non-empty subset of the model's files (or the
// whole tree as one directory argument).
func (s *soak) some() []string {
	ps := s.paths()
	if len(ps) == 0 {
		return nil
	}
	if s.r.IntN(4) == 0 {
		return []string{s.hot}
	}
	s.r.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
	return ps[:1+s.r.IntN(min(len(ps), 8))]
}

func (s *soak) relAll(ps []string) string {
	var out []string
	for _, p := range ps {
		out = append(out, s.rel(p))
	}
	return strings.Join(out, " ")
}

func (s *soak) archive() {
	ps := s.some()
	if ps == nil {
		return
	}
	out, errs, code := s.strata(3*time.Minute, append([]string{"archive", "--wait", "--timeout", "2m", "--json"}, ps...)...)
	var sum archiveSummary
	json.Unmarshal([]byte(out), &sum)
	s.logf("archive --wait %s: exit %d, selected %d, released %d, skipped %d %s", s.relAll(ps), code, sum.Selected, sum.Released, len(sum.Skipped), strings.TrimSpace(errs))
	for _, sk := range sum.Skipped {
		s.logf("  skipped %s: %s", s.rel(sk.Path), sk.Reason)
	}
	if code != 0 {
		s.failf("archive --wait %s: exit %d: %s%s", s.relAll(ps), code, out, errs)
	}
}

func (s *soak) archiveAsync() {
	ps := s.some()
	if ps == nil {
		return
	}
	out, errs, code := s.strata(time.Minute, append([]string{"archive"}, ps...)...)
	s.logf("archive (no wait) %s: exit %d %s", s.relAll(ps), code, strings.TrimSpace(errs))
	if code != 0 {
		s.failf("archive %s: exit %d: %s%s", s.relAll(ps), code, out, errs)
	}
}

// readers are the real programs that read a file; each returns what it
// printed and the bytes of the model it must equal.
type soakReader struct {
	name string
	cmd  func(p string, want []byte) (*exec.Cmd, []byte, func(out []byte) []byte)
}

func (s *soak) readers() []soakReader {
	hexOf := func(b []byte) []byte {
		h := sha256.Sum256(b)
		return []byte(hex.EncodeToString(h[:]))
	}
	firstField := func(out []byte) []byte {
		if i := bytes.IndexAny(out, " \n"); i >= 0 {
			return out[:i]
		}
		return out
	}
	same := func(out []byte) []byte { return out }
	return []soakReader{
		{"cat", func(p string, want []byte) (*exec.Cmd, []byte, func([]byte) []byte) {
			return exec.Command("cat", p), want, same
		}},
		{"sha256sum", func(p string, want []byte) (*exec.Cmd, []byte, func([]byte) []byte) {
			return exec.Command("sha256sum", p), hexOf(want), firstField
		}},
		{"dd", func(p string, want []byte) (*exec.Cmd, []byte, func([]byte) []byte) {
			bs := 4096
			blocks := len(want)/bs + 1
			skip := s.r.IntN(blocks)
			count := 1 + s.r.IntN(64)
			from, to := min(skip*bs, len(want)), min((skip+count)*bs, len(want))
			return exec.Command("dd", "if="+p, "bs=4096", fmt.Sprintf("skip=%d", skip), fmt.Sprintf("count=%d", count), "status=none"), want[from:to], same
		}},
		{"tail", func(p string, want []byte) (*exec.Cmd, []byte, func([]byte) []byte) {
			n := 1 + s.r.IntN(100<<10)
			return exec.Command("tail", "-c", strconv.Itoa(n), p), want[len(want)-min(n, len(want)):], same
		}},
		{"cp", func(p string, want []byte) (*exec.Cmd, []byte, func([]byte) []byte) {
			dst := filepath.Join(s.t.TempDir(), "copy")
			return exec.Command("cp", p, dst), want, func([]byte) []byte {
				b, err := os.ReadFile(dst)
				if err != nil {
					return []byte("cp left no copy: " + err.Error())
				}
				os.Remove(dst)
				return b
			}
		}},
		{"mmap", func(p string, want []byte) (*exec.Cmd, []byte, func([]byte) []byte) {
			return exec.Command(s.helper, "mmap", p), hexOf(want), func(out []byte) []byte { return bytes.TrimSpace(out) }
		}},
	}
}

// readWith runs one reader on p and judges the outcome. eioOK: an EIO is
// allowed (a program held on a stub through a kill -9).
type readOutcome struct {
	name  string
	out   []byte
	errs  string
	err   error
	want  []byte
	judge func([]byte) []byte
}

func (s *soak) startRead(rd soakReader, p string) (*exec.Cmd, *readOutcome) {
	want := s.files[p].data
	cmd, exp, judge := rd.cmd(p, want)
	o := &readOutcome{name: rd.name, want: exp, judge: judge}
	return cmd, o
}

func (s *soak) runRead(cmd *exec.Cmd, o *readOutcome) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	o.err = cmd.Run()
	o.out, o.errs = out.Bytes(), errb.String()
}

// judge fails the run on wrong bytes; on an error, it fails unless eioOK
// and the error is EIO. It reports whether the read gave the bytes.
func (s *soak) judge(p string, o *readOutcome, eioOK bool, how string) bool {
	if o.err == nil {
		got := o.judge(o.out)
		if !bytes.Equal(got, o.want) {
			if len(got) > 200 || len(o.want) > 200 {
				s.failf("%s %s %s: exit 0 with WRONG BYTES: %s", how, o.name, s.rel(p), firstDiff(got, o.want))
			} else {
				s.failf("%s %s %s: exit 0 with WRONG BYTES: %q, want %q", how, o.name, s.rel(p), got, o.want)
			}
			return false
		}
		s.readsOK++
		return true
	}
	eio := strings.Contains(o.errs, "Input/output error") || strings.Contains(o.errs, "input/output error")
	// A hole prober (cp) on a stub while no daemon answers is killed by
	// the probe guard (docs: SIGKILL, exit 137): an error, never zeros.
	eio = eio || strings.Contains(o.err.Error(), "signal: killed")
	if eio && eioOK {
		s.readsEIO++
		s.logf("  %s %s %s: %v %s (EIO: allowed here)", how, o.name, s.rel(p), o.err, strings.TrimSpace(o.errs))
		return false
	}
	s.failf("%s %s %s: %v: %s", how, o.name, s.rel(p), o.err, strings.TrimSpace(o.errs))
	return false
}

func (s *soak) read() {
	// Mostly stubs: that is where the interceptor works.
	p := s.pick(isStub)
	if p == "" || s.r.IntN(5) == 0 {
		p = s.pick(nil)
	}
	if p == "" {
		return
	}
	rds := s.readers()
	rd := rds[s.r.IntN(len(rds))]
	if rd.name == "mmap" && len(s.files[p].data) == 0 {
		rd = rds[0] // mmap of an empty file is EINVAL
	}
	info, err := stub.ReadPath(p)
	state := "hot"
	if err == nil {
		state = string(info.State)
	}
	start := time.Now()
	cmd, o := s.startRead(rd, p)
	s.runRead(cmd, o)
	s.logf("read %s (%s, %d bytes) with %s: %v in %s", s.rel(p), state, len(s.files[p].data), rd.name, o.err, time.Since(start).Round(time.Millisecond))
	s.judge(p, o, false, "read")
}

// modify writes into a file: append, overwrite in place, truncate, or
// replace the whole content; with the test's own writes or with dd.
func (s *soak) modify() {
	p := s.pick(nil)
	if p == "" {
		return
	}
	f := s.files[p]
	info, ierr := stub.ReadPath(p)
	state := "hot"
	if ierr == nil {
		state = string(info.State)
	}
	old := f.data
	var next []byte
	var err error
	var what string
	switch s.r.IntN(5) {
	case 0: // append
		add := s.content(1 + s.r.IntN(256<<10))
		what = fmt.Sprintf("append %d", len(add))
		var fh *os.File
		if fh, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			_, err = fh.Write(add)
			if cerr := fh.Close(); err == nil {
				err = cerr
			}
		}
		next = append(slices.Clone(old), add...)
	case 1: // overwrite in place (maybe past EOF) with pwrite
		off := s.r.IntN(len(old) + 1)
		add := s.content(1 + s.r.IntN(128<<10))
		what = fmt.Sprintf("pwrite %d at %d", len(add), off)
		var fh *os.File
		if fh, err = os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			_, err = fh.WriteAt(add, int64(off))
			if cerr := fh.Close(); err == nil {
				err = cerr
			}
		}
		next = slices.Clone(old)
		if end := off + len(add); end > len(next) {
			next = append(next, make([]byte, end-len(next))...)
		}
		copy(next[off:], add)
	case 2: // dd conv=notrunc into the middle
		off := s.r.IntN(len(old) + 1)
		add := s.content(1 + s.r.IntN(64<<10))
		what = fmt.Sprintf("dd %d at %d", len(add), off)
		cmd := exec.Command("dd", "of="+p, "bs=1", "seek="+strconv.Itoa(off), "conv=notrunc", "status=none")
		cmd.Stdin = bytes.NewReader(add)
		if out, derr := cmd.CombinedOutput(); derr != nil {
			err = fmt.Errorf("%w: %s", derr, out)
		}
		next = slices.Clone(old)
		if end := off + len(add); end > len(next) {
			next = append(next, make([]byte, end-len(next))...)
		}
		copy(next[off:], add)
	case 3: // truncate shorter
		n := s.r.IntN(len(old) + 1)
		what = fmt.Sprintf("truncate to %d", n)
		err = os.Truncate(p, int64(n))
		next = slices.Clone(old[:n])
	default: // replace
		next = s.content(s.size())
		what = fmt.Sprintf("replace with %d", len(next))
		err = os.WriteFile(p, next, 0o644)
	}
	s.logf("modify %s (%s, %d bytes): %s: %v", s.rel(p), state, len(old), what, err)
	if err != nil {
		s.failf("modify %s (%s): %s: %v", s.rel(p), state, what, err)
		return
	}
	f.set(next)
}

func (s *soak) rename() {
	p := s.pick(nil)
	if p == "" {
		return
	}
	dst := s.newPath()
	over := false
	if s.r.IntN(5) == 0 {
		if q := s.pick(func(q string, _ stub.Info, _ bool) bool { return q != p }); q != "" {
			dst, over = q, true
		}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if over {
		s.noteDeleted(dst)
	}
	err := os.Rename(p, dst)
	s.logf("rename %s -> %s (over an existing file: %v): %v", s.rel(p), s.rel(dst), over, err)
	if err != nil {
		s.failf("rename: %v", err)
		return
	}
	s.files[dst] = s.files[p]
	delete(s.files, p)
}

// noteDeleted remembers an archived file about to be deleted, for a
// restore by its id.
func (s *soak) noteDeleted(p string) {
	if info, err := stub.ReadPath(p); err == nil {
		s.deleted[info.FileID] = append(s.deleted[info.FileID], s.files[p].hist...)
	}
}

func (s *soak) remove() {
	p := s.pick(nil)
	if p == "" {
		return
	}
	s.noteDeleted(p)
	err := os.Remove(p)
	s.logf("delete %s: %v", s.rel(p), err)
	if err != nil {
		s.failf("delete: %v", err)
		return
	}
	delete(s.files, p)
}

// restore writes an archived version back into the hot tree as a new file:
// of a live file (its latest archived version: the model's bytes if the
// file is clean, else one of its earlier contents) or of a deleted one by
// its id.
func (s *soak) restore() {
	if len(s.files) >= soakMaxFiles {
		return
	}
	dst := s.newPath()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		s.t.Fatal(err)
	}
	var args []string
	var hist [][32]byte
	var exact *[32]byte
	var what string
	if ids := slices.Sorted(maps.Keys(s.deleted)); len(ids) > 0 && s.r.IntN(3) == 0 {
		id := ids[s.r.IntN(len(ids))]
		args, hist, what = []string{"--file-id", id}, s.deleted[id], "deleted file "+id[:min(12, len(id))]
	} else {
		p := s.pick(func(_ string, _ stub.Info, managed bool) bool { return managed })
		if p == "" {
			return
		}
		info, _ := stub.ReadPath(p)
		if st, err := os.Stat(p); err == nil && info.Unchanged(st.Size(), st.ModTime().UnixNano()) {
			sum := s.files[p].sum
			if hex.EncodeToString(sum[:]) == info.ObjectID {
				exact = &sum
			}
		}
		args, hist, what = []string{p}, s.files[p].hist, s.rel(p)+" ("+string(info.State)+")"
	}
	out, errs, code := s.strata(2*time.Minute, append(append([]string{"restore"}, args...), "--to", dst)...)
	s.logf("restore %s --to %s: exit %d %s%s", what, s.rel(dst), code, strings.TrimSpace(out), strings.TrimSpace(errs))
	if code != 0 {
		if exact != nil {
			s.failf("restore of clean %s: exit %d: %s%s", what, code, out, errs)
		}
		os.Remove(dst)
		return
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		s.failf("read the restored %s: %v", dst, err)
		return
	}
	sum := blake3.Sum256(b)
	switch {
	case exact != nil && sum != *exact:
		s.failf("restore of clean %s gave %d bytes that differ from the file's content", what, len(b))
	case !slices.Contains(hist, sum):
		s.failf("restore of %s gave %d bytes that are none of the contents the file ever had", what, len(b))
	}
	f := &soakFile{}
	f.set(b)
	s.files[dst] = f
}

func (s *soak) recall() {
	var ps []string
	for range 1 + s.r.IntN(3) {
		if p := s.pick(isStub); p != "" && !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	if ps == nil {
		return
	}
	out, errs, code := s.strata(3*time.Minute, append([]string{"recall", "--wait"}, ps...)...)
	s.logf("recall --wait %s: exit %d %s", s.relAll(ps), code, strings.TrimSpace(errs))
	if code != 0 {
		s.failf("recall --wait %s: exit %d: %s%s", s.relAll(ps), code, out, errs)
		return
	}
	for _, p := range ps {
		// The state says archived once the interceptor has proven the
		// whole content, a moment after the last read.
		for wait := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			info, err := stub.ReadPath(p)
			if err != nil || info.State != stub.Released {
				break
			}
			if time.Now().After(wait) {
				s.logf("  %s is still a stub 10s after recall --wait", s.rel(p))
				break
			}
		}
		s.readDirect(p, "after recall --wait")
	}
}

// release frees again the recalled ranges of partially resident stubs.
func (s *soak) release() {
	ps := s.some()
	if ps == nil {
		return
	}
	out, errs, code := s.strata(2*time.Minute, append([]string{"release"}, ps...)...)
	s.logf("release %s: exit %d %s %s", s.relAll(ps), code, firstLines(out, "", 3), strings.TrimSpace(errs))
	// A stub written since its release is kept, with the reason, in a
	// reply that still exits 0; the bytes are checked after the step.
	if code != 0 {
		s.failf("release %s: exit %d: %s%s", s.relAll(ps), code, out, errs)
	}
}

// parallelRead runs several programs at once on stubs (often the same
// one: concurrent accesses share one recall).
func (s *soak) parallelRead() {
	first := s.pick(isStub)
	if first == "" {
		return
	}
	rds := s.readers()
	type run struct {
		p    string
		o    *readOutcome
		done chan struct{}
	}
	var runs []run
	for range 2 + s.r.IntN(3) {
		p := first
		if s.r.IntN(3) == 0 {
			if q := s.pick(isStub); q != "" {
				p = q
			}
		}
		rd := rds[s.r.IntN(len(rds))]
		if rd.name == "mmap" && len(s.files[p].data) == 0 {
			rd = rds[0]
		}
		cmd, o := s.startRead(rd, p)
		r := run{p: p, o: o, done: make(chan struct{})}
		go func() { s.runRead(cmd, o); close(r.done) }()
		runs = append(runs, r)
	}
	var names []string
	for _, r := range runs {
		<-r.done
		names = append(names, r.o.name+" "+s.rel(r.p))
	}
	s.logf("parallel read: %s", strings.Join(names, ", "))
	for _, r := range runs {
		s.judge(r.p, r.o, false, "parallel read")
	}
}

func (s *soak) scrub() {
	if s.fault != "" {
		return // a flipped read-back would condemn a good copy
	}
	out, errs, code := s.strata(5*time.Minute, "scrub", "--rate", "0")
	s.logf("scrub: exit %d %s", code, strings.TrimSpace(tail(out+errs, 3)))
	if code != 0 {
		s.failf("scrub with every tier healthy: exit %d: %s%s", code, out, errs)
	}
}

// soakFaults are the outages of the webdav tier.
var soakFaults = []struct {
	name  string
	rules []faulttest.Rule
}{
	{"500s", []faulttest.Rule{{Fault: faulttest.Error500}}},
	{"resets", []faulttest.Rule{{Fault: faulttest.Reset}}},
	{"hangs", []faulttest.Rule{{Fault: faulttest.Hang}}},
	{"flipped reads", []faulttest.Rule{{Method: "GET", Path: ".zst", Fault: faulttest.FlipResponse, Middle: true}}},
	{"cut reads", []faulttest.Rule{{Method: "GET", Path: ".zst", Fault: faulttest.TruncateResponse, Middle: true}}},
	{"flipped uploads", []faulttest.Rule{{Method: "PUT", Fault: faulttest.FlipRequest, Middle: true}}},
	{"latency", []faulttest.Rule{{Fault: faulttest.Latency, Delay: 700 * time.Millisecond}}},
}

func (s *soak) outage() {
	if s.fault != "" {
		s.proxy.Clear()
		s.logf("tier dav: outage (%s) over", s.fault)
		s.fault = ""
		return
	}
	f := soakFaults[s.r.IntN(len(soakFaults))]
	s.proxy.Set(f.rules...)
	s.fault = f.name
	s.logf("tier dav: outage begins: %s", f.name)
}

// restart stops the daemon with SIGTERM and starts it again.
func (s *soak) restart() {
	start := time.Now()
	s.stop(false)
	s.start()
	s.logf("restart (SIGTERM): %s", time.Since(start).Round(time.Millisecond))
}

// kill kills the daemon with SIGKILL, sometimes in the middle of an
// archive, with programs reading stubs before and after the kill, and
// starts it again; the programs must end with the right bytes or EIO.
func (s *soak) kill() {
	type held struct {
		p    string
		cmd  *exec.Cmd
		o    *readOutcome
		done chan struct{}
	}
	var readers []held
	startReader := func() {
		p := s.pick(isStub)
		if p == "" {
			return
		}
		rds := s.readers()
		rd := rds[s.r.IntN(len(rds))]
		if rd.name == "mmap" && len(s.files[p].data) == 0 {
			rd = rds[0]
		}
		cmd, o := s.startRead(rd, p)
		h := held{p: p, cmd: cmd, o: o, done: make(chan struct{})}
		go func() { s.runRead(cmd, o); close(h.done) }()
		readers = append(readers, h)
	}
	what := "idle"
	switch s.r.IntN(3) {
	case 0:
		if ps := s.some(); ps != nil {
			if _, _, code := s.strata(time.Minute, append([]string{"archive"}, ps...)...); code == 0 {
				what = "archiving " + s.relAll(ps)
				time.Sleep(time.Duration(s.r.IntN(1500)) * time.Millisecond)
			}
		}
	case 1:
		for range 1 + s.r.IntN(2) {
			startReader()
		}
		what = "reading"
		time.Sleep(time.Duration(s.r.IntN(50)) * time.Millisecond)
	}
	start := time.Now()
	s.stop(true)
	// Programs that touch stubs while no daemon runs: the holder keeps
	// them waiting for the next daemon (stopped_grace).
	for range s.r.IntN(3) {
		startReader()
	}
	time.Sleep(time.Duration(s.r.IntN(3000)) * time.Millisecond)
	s.start()
	s.logf("kill -9 (%s), %d programs on stubs: restarted after %s", what, len(readers), time.Since(start).Round(time.Millisecond))
	for _, h := range readers {
		select {
		case <-h.done:
			s.judge(h.p, h.o, true, "held through kill -9:")
		case <-time.After(90 * time.Second):
			s.failf("%s %s still held 90s after the restart", h.o.name, s.rel(h.p))
			h.cmd.Process.Kill()
			<-h.done
		}
	}
}

// downWork stops the daemon and, while it is down, renames and deletes
// files (stubs too: no data access) and writes into files that are not
// stubs, then starts it again: the scans of the new daemon find it all.
func (s *soak) downWork() {
	s.stop(s.r.IntN(2) == 0)
	s.logf("daemon down for work")
	for range 1 + s.r.IntN(4) {
		switch s.r.IntN(4) {
		case 0:
			s.rename()
		case 1:
			if s.r.IntN(2) == 0 {
				s.remove()
			}
		default:
			p := s.pick(notStub)
			if p == "" {
				continue
			}
			f := s.files[p]
			add := s.content(1 + s.r.IntN(64<<10))
			fh, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				_, err = fh.Write(add)
				fh.Close()
			}
			s.logf("  append %d to %s with the daemon down: %v", len(add), s.rel(p), err)
			if err != nil {
				s.failf("append to %s (not a stub) with the daemon down: %v", s.rel(p), err)
				continue
			}
			f.set(append(slices.Clone(f.data), add...))
		}
	}
	s.start()
}

// readDirect reads p in-process (through the interceptor if it is a stub)
// and compares it with the model.
func (s *soak) readDirect(p, when string) {
	got, err := os.ReadFile(p)
	if err != nil {
		s.failf("%s: read %s: %v", when, s.rel(p), err)
		return
	}
	if want := s.files[p].data; !bytes.Equal(got, want) {
		s.failf("%s: %s differs from the model: %s", when, s.rel(p), firstDiff(got, want))
	}
}

// checkAll reads every file with cat (stubs are recalled).
func (s *soak) checkAll() {
	start := time.Now()
	for _, p := range s.paths() {
		cmd, o := s.startRead(s.readers()[0], p)
		s.runRead(cmd, o)
		s.judge(p, o, false, "check-all")
	}
	s.logf("check-all: cat of %d files in %s", len(s.files), time.Since(start).Round(time.Millisecond))
}

// check is the invariant check after every step: the tree holds exactly
// the model's files, with their sizes; a file that is not a stub holds
// the model's bytes; a stub not written since its release names the
// model's BLAKE3 as its object and has that object on the directory tier.
func (s *soak) check() {
	s.t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(s.hot, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() && de.Name() == "lost+found" {
			return filepath.SkipDir
		}
		if de.IsDir() {
			return nil
		}
		if !de.Type().IsRegular() {
			s.failf("check: %s is not a regular file (%v)", s.rel(p), de.Type())
			return nil
		}
		seen[p] = true
		if _, ok := s.files[p]; !ok {
			s.failf("check: %s is in the tree but not in the model", s.rel(p))
		}
		return nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
	for _, p := range s.paths() {
		if !seen[p] {
			s.failf("check: %s is missing from the tree", s.rel(p))
			continue
		}
		f := s.files[p]
		st, err := os.Stat(p)
		if err != nil {
			s.failf("check: stat %s: %v", s.rel(p), err)
			continue
		}
		if st.Size() != int64(len(f.data)) {
			s.failf("check: %s has size %d, the model %d", s.rel(p), st.Size(), len(f.data))
			continue
		}
		info, err := stub.ReadPath(p)
		switch {
		case err == nil && info.State == stub.Released:
			if !info.Unchanged(st.Size(), st.ModTime().UnixNano()) {
				s.readDirect(p, "check (a stub written since its release)")
				continue
			}
			if want := hex.EncodeToString(f.sum[:]); info.ObjectID != want {
				s.failf("check: %s is a stub of object %s, but its content (the model) hashes to %s", s.rel(p), info.ObjectID, want)
				continue
			}
			oid := info.ObjectID
			if _, err := os.Stat(filepath.Join(s.cold, "objects", oid[:2], oid+".zst")); err != nil {
				s.failf("check: %s is a stub, but the directory tier has no copy of its object: %v", s.rel(p), err)
			}
		case err == nil || errors.Is(err, stub.ErrNotManaged) || isNotManaged(err):
			s.readDirect(p, "check")
		default:
			s.failf("check: xattrs of %s: %v", s.rel(p), err)
		}
	}
}

// settle ends the run: faults off, daemon up, pipeline idle; then every
// file archived and released, every stub's object restored with zstd,
// every file read with cat, replay --verify, no dead letters, no stray
// file in the directory tier.
func (s *soak) settle() {
	s.step++
	s.logf("settle: faults off, waiting for the stages to go idle")
	s.proxy.Clear()
	s.fault = ""
	if !s.running() {
		s.start()
	}
	// A store stage retries a failing tier every 5 minutes at the end
	// (store.Backoff): a retry scheduled just before the faults ended
	// comes that late.
	deadline := time.Now().Add(6 * time.Minute)
	for {
		err := stagesIdle(s.data)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			s.failf("settle: stages not idle 6 minutes after the faults ended: %v", err)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, errs, code := s.strata(4*time.Minute, "archive", "--wait", "--timeout", "3m", "--json", s.hot)
	var sum archiveSummary
	json.Unmarshal([]byte(out), &sum)
	s.logf("settle: archive --wait of the tree: exit %d, selected %d, released %d, skipped %d %s", code, sum.Selected, sum.Released, len(sum.Skipped), errs)
	if code != 0 {
		s.failf("settle: archive --wait: exit %d: %s%s", code, out, errs)
	}
	for _, sk := range sum.Skipped {
		if s.files[sk.Path] != nil && len(s.files[sk.Path].data) == 0 {
			continue // an empty file stays hot (policy.min_size = 1)
		}
		s.failf("settle: archive skipped %s: %s", s.rel(sk.Path), sk.Reason)
	}
	var ls scanner.LsReply
	lsOut, lsErr, code := s.strata(time.Minute, "ls", "--json", s.hot)
	if code != 0 || json.Unmarshal([]byte(lsOut), &ls) != nil {
		s.failf("settle: ls: exit %d %s%s", code, lsOut, lsErr)
		return
	}
	byPath := map[string]scanner.LsEntry{}
	for _, e := range ls.Files {
		byPath[e.Path] = e
	}
	released := 0
	for _, p := range s.paths() {
		f := s.files[p]
		info, err := stub.ReadPath(p)
		if err == nil && info.State == stub.Released {
			released++
			checkTierCopy(s.t, s.cold, p, info.ObjectID, f.data)
			if e := byPath[p]; !slices.Contains(e.Copies, "cold") {
				s.failf("settle: ls %s: released with copies %v, want one on cold", s.rel(p), e.Copies)
			}
		} else if len(f.data) > 0 {
			s.failf("settle: %s is not released after archive --wait (%v, %+v)", s.rel(p), err, byPath[p])
		}
	}
	s.check()
	s.checkAll()
	if out, errs, code := s.strata(5*time.Minute, "replay", "--verify"); code != 0 {
		s.failf("settle: replay --verify: exit %d: %s%s", code, out, errs)
	}
	var st statusReply
	stOut, _, _ := s.strata(time.Minute, "status", "--json")
	if err := json.Unmarshal([]byte(stOut), &st); err != nil {
		s.failf("settle: status --json: %v: %s", err, stOut)
	} else if st.Stream.DeadLetters != 0 {
		s.failf("settle: %d dead letters: %+v", st.Stream.DeadLetters, st.Stream)
	}
	checkTierClean(s.t, s.cold)
	s.logf("settle: %d files (%d stubs, %d bytes) checked", len(s.files), released, s.total())
}
