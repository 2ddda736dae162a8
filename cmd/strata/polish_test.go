package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestCLIPolish checks, against a real daemon on a loop-mounted ext4 hot
// tree, what a new user trips over: policy preview says why files were
// not chosen, ls prints human sizes (--bytes for raw), an explicit path
// outside every hot tree is an error (exit 1, nothing selected), and every
// event line names its source host and program.
func TestCLIPolish(t *testing.T) {
	stratatest.NeedRoot(t)
	hot := stratatest.LoopMount(t, "ext4", 64<<20)
	data := t.TempDir()
	// No scan but the one at start (the tree is empty then): the files
	// below stay as they are written.
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Policy: PolicyConfig{
		ScanInterval: duration(24 * time.Hour), MinSize: 4096, Exclude: []string{"**/*.tmp"}}})

	old := time.Now().Add(-2 * 365 * 24 * time.Hour)
	mk := func(name string, size int, aged bool) string {
		t.Helper()
		p := filepath.Join(hot, name)
		if err := os.WriteFile(p, []byte(strings.Repeat("x", size)), 0o644); err != nil {
			t.Fatal(err)
		}
		if aged {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	chosen := mk("old.bin", 96<<10, true)
	mk("young.bin", 96<<10, false)
	mk("tiny.txt", 100, true)
	mk("skip.tmp", 96<<10, true)
	pinned := mk("pinned.bin", 96<<10, true)
	sparse := filepath.Join(hot, "sparse.bin")
	if err := os.WriteFile(sparse, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(sparse, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(sparse, old, old); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := cli(t, "pin", pinned, "--data", data); code != 0 {
		t.Fatalf("pin: exit %d %s", code, errs)
	}

	// policy preview: one candidate, and one count per reason.
	var rep scanner.Report
	cliJSON(t, &rep, "policy", "preview", "--json", "--data", data)
	s := rep.Summary
	if rep.Files != 1 || len(rep.Candidates) != 1 || rep.Candidates[0].Path != chosen {
		t.Fatalf("preview candidates: %+v", rep)
	}
	if s.TooYoung != 1 || s.TooSmall != 1 || s.Excluded != 1 || s.Pinned != 1 || s.NoBlocks != 1 {
		t.Errorf("preview counts: too young %d, too small %d, excluded %d, pinned %d, no blocks %d; want 1 each",
			s.TooYoung, s.TooSmall, s.Excluded, s.Pinned, s.NoBlocks)
	}
	out, errs, code := cli(t, "policy", "preview", "--data", data)
	if code != 0 {
		t.Fatalf("policy preview: exit %d %s", code, errs)
	}
	for _, re := range []string{`not chosen:`, `1\s+too young \(policy\.min_age`, `1\s+too small \(policy\.min_size\)`, `1\s+excluded`, `1\s+pinned`, `1\s+hold no blocks`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("policy preview lacks %q:\n%s", re, out)
		}
	}

	// ls: human sizes; --bytes for raw.
	out, errs, code = cli(t, "ls", "--data", data, chosen)
	if code != 0 || !strings.Contains(out, "96.0 KiB") || strings.Contains(out, "98304") {
		t.Errorf("ls: exit %d, want 96.0 KiB:\n%s%s", code, out, errs)
	}
	out, _, code = cli(t, "ls", "--bytes", "--data", data, chosen)
	if code != 0 || !strings.Contains(out, "98304") {
		t.Errorf("ls --bytes: exit %d, want 98304:\n%s", code, out)
	}

	// archive of a path outside every hot tree: an error, and nothing of
	// the request is selected.
	for _, args := range [][]string{{"/etc/hostname"}, {chosen, "/etc/hostname"}} {
		out, errs, code := cli(t, append([]string{"archive", "--data", data}, args...)...)
		if code != exitFailure || !strings.Contains(errs, "/etc/hostname is not inside a configured hot tree") || !strings.Contains(errs, hot) {
			t.Errorf("archive %v: exit %d, %q %q; want exit 1 naming the path and the hot trees", args, code, out, errs)
		}
	}
	var ls scanner.LsReply
	cliJSON(t, &ls, "ls", "--json", "--data", data, chosen)
	if len(ls.Files) != 1 || ls.Files[0].State != "resident" {
		t.Errorf("after refused archives: %+v; want the file untouched", ls.Files)
	}

	// events: every line says which host and program published it.
	out, _, code = cli(t, "events", "--data", data)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) == 0 || lines[0] == "" {
		t.Fatalf("events: exit %d %q", code, out)
	}
	for _, l := range lines {
		f := strings.Split(l, "\t")
		if len(f) < 4 || !strings.HasPrefix(f[2], "testhost/") || len(f[2]) == len("testhost/") {
			t.Errorf("event line without host/program: %q", l)
		}
	}
	if !strings.Contains(out, "testhost/pin\tfile.pinned\t"+pinned) {
		t.Errorf("events: no file.pinned from testhost/pin:\n%s", out)
	}
	var js map[string]any
	out, _, _ = cli(t, "events", "--json", "--data", data)
	if err := json.Unmarshal([]byte(strings.Split(out, "\n")[0]), &js); err != nil || js["source"] != "/strata/testhost/pin" {
		t.Errorf("events --json source: %v %v", js["source"], err)
	}
}

// TestStartLogNoDuplicateKeys starts the real binary (with a tier whose
// disk is not mounted, so that its warning is logged too) and checks that
// no line of its log repeats an attribute (every tier warning said
// tier=cold tier=cold; a NATS warning said component twice) and that the
// only warning at start is the tier's.
func TestStartLogNoDuplicateKeys(t *testing.T) {
	stratatest.NeedRoot(t)
	bin := buildStrata(t)
	data, hot, cold := t.TempDir(), t.TempDir(), t.TempDir()
	p := startStrata(t, bin, data, hot, cold, "")
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(p.logs(), "tier unreachable: nothing is stored there until it answers") {
			return errors.New("no tier warning yet")
		}
		return nil
	})
	for _, line := range strings.Split(strings.TrimSpace(p.logs()), "\n") {
		seen := map[string]bool{}
		for _, k := range logfmtKeys(line) {
			if seen[k] {
				t.Errorf("attribute %q twice in: %s", k, line)
			}
			seen[k] = true
		}
		if strings.Contains(line, "level=WARN") && !strings.Contains(line, "tier unreachable: nothing is stored there until it answers") {
			t.Errorf("warning at start: %s", line)
		}
	}
}

// TestArchiveWaitSaysWhy: `archive --wait` on a tier whose disk is not
// mounted does not sit at 0% in silence: once nothing moves for
// stallCheck, its progress says which tier does not answer and why, and
// the timeout's error says it again.
func TestArchiveWaitSaysWhy(t *testing.T) {
	stratatest.NeedRoot(t)
	bin := buildStrata(t)
	data, hot, cold := t.TempDir(), t.TempDir(), t.TempDir()
	f := filepath.Join(hot, "a.bin")
	if err := os.WriteFile(f, bytes.Repeat([]byte("strata"), 50000), 0o644); err != nil {
		t.Fatal(err)
	}
	startStrata(t, bin, data, hot, cold, "")
	_, stderr, code := cli(t, "archive", "--wait", "--timeout", (stallCheck + 10*time.Second).String(), "--data", data, f)
	if code == 0 {
		t.Fatalf("archive --wait to an unmounted tier exited 0; stderr:\n%s", stderr)
	}
	want := "waiting: tier cold is unreachable: " // the progress line, during the wait
	if !strings.Contains(stderr, want) || !strings.Contains(stderr, "is not a mount point") {
		t.Errorf("stderr does not say why the archive waits (want %q and the reason):\n%s", want, stderr)
	}
	if !strings.Contains(stderr, "still in progress after") {
		t.Errorf("no timeout error:\n%s", stderr)
	}
}

// logfmtKeys returns the keys of a logfmt line (key=value, values maybe
// quoted with backslash escapes).
func logfmtKeys(line string) []string {
	var keys []string
	for i := 0; i < len(line); {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		start := i
		for i < len(line) && line[i] != '=' && line[i] != ' ' {
			i++
		}
		if i < len(line) && line[i] == '=' {
			keys = append(keys, line[start:i])
			i++
			if i < len(line) && line[i] == '"' {
				for i++; i < len(line) && line[i] != '"'; i++ {
					if line[i] == '\\' {
						i++
					}
				}
				i++
			} else {
				for i < len(line) && line[i] != ' ' {
					i++
				}
			}
		}
	}
	return keys
}
