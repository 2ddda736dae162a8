package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/strata-hsm/strata/cmd/internal/doctor"
	"github.com/strata-hsm/strata/workers/scanner"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// parseArgs parses args as run does and returns the grammar filled in and
// the selected command ("ls <path>").
func parseArgs(t *testing.T, args ...string) (*commandLine, string, error) {
	t.Helper()
	k, c, err := newParser(&env{stdout: &strings.Builder{}, stderr: &strings.Builder{}})
	if err != nil {
		t.Fatal(err)
	}
	args, err = intersperse(k.Model, args)
	if err != nil {
		return c, "", err
	}
	kctx, err := k.Parse(args)
	if err != nil {
		return c, "", err
	}
	return c, kctx.Command(), nil
}

// TestParseFlagsAnywhere: flags stand before, between or after positional
// arguments; "--" ends them; a value may start with '-'; Go's single-dash
// long flags still work; repeatable flags repeat. Several of these lines
// failed with the flag package (it stops at the first positional
// argument: `ls PATH --json` listed a file named --json).
func TestParseFlagsAnywhere(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		cmd   string
		check func(c *commandLine) bool
	}{
		{[]string{"restore", "/a/f", "--to", "/tmp/f2", "--data", "/d"}, "restore <path>", func(c *commandLine) bool {
			return c.Restore.Path == "/a/f" && c.Restore.To == "/tmp/f2" && c.Data == "/d"
		}},
		{[]string{"restore", "--version", "2", "/a/f", "--to=/tmp/f2"}, "restore <path>", func(c *commandLine) bool {
			return c.Restore.Path == "/a/f" && c.Restore.Version == 2 && c.Restore.To == "/tmp/f2"
		}},
		{[]string{"ls", "/a", "--json"}, "ls <path>", func(c *commandLine) bool {
			return c.Ls.JSON && slices.Equal(c.Ls.Paths, []string{"/a"}) && c.Ls.Limit == scanner.LsLimit
		}},
		{[]string{"ls", "/a", "--json", "/b", "--limit", "5", "/c"}, "ls <path>", func(c *commandLine) bool {
			return c.Ls.JSON && c.Ls.Limit == 5 && slices.Equal(c.Ls.Paths, []string{"/a", "/b", "/c"})
		}},
		{[]string{"--data", "/d", "ls", "/a"}, "ls <path>", func(c *commandLine) bool { return c.Data == "/d" }},
		{[]string{"ls", "--", "--json", "-x"}, "ls <path>", func(c *commandLine) bool {
			return !c.Ls.JSON && slices.Equal(c.Ls.Paths, []string{"--json", "-x"})
		}},
		{[]string{"ls", "-json", "-data", "/d", "/a"}, "ls <path>", func(c *commandLine) bool {
			return c.Ls.JSON && c.Data == "/d" && slices.Equal(c.Ls.Paths, []string{"/a"})
		}},
		{[]string{"archive", "/a", "--wait", "/b", "--timeout", "90s", "--json"}, "archive <path>", func(c *commandLine) bool {
			return c.Archive.Wait && c.Archive.JSON && c.Archive.Timeout == 90*time.Second && slices.Equal(c.Archive.Paths, []string{"/a", "/b"})
		}},
		{[]string{"recall", "/a", "--wait"}, "recall <path>", func(c *commandLine) bool { return c.Recall.Wait }},
		{[]string{"run", "--port", "-1", "--hot", "/h1", "--hot=/h,2", "--cold", "/c", "--log-json", "--debug", "--config", "f.toml", "--host", "h"}, "run",
			func(c *commandLine) bool {
				r := c.Run
				return r.Port == -1 && slices.Equal(r.Hot, []string{"/h1", "/h,2"}) && r.Cold == "/c" && r.LogJSON && r.Debug && r.Config == "f.toml" && r.Host == "h"
			}},
		{[]string{"events", "--follow", "--since", "7", "--json"}, "events", func(c *commandLine) bool {
			return c.Events.Follow && c.Events.Since == 7 && c.Events.JSON
		}},
		{[]string{"events"}, "events", func(c *commandLine) bool { return c.Events.Since == 1 }},
		{[]string{"policy", "preview", "--limit", "20", "--json"}, "policy preview", func(c *commandLine) bool {
			return c.Policy.Preview.Limit == 20 && c.Policy.Preview.JSON
		}},
		{[]string{"scrub", "--tier", "s3", "--sample", "10%", "--rate", "50MiB", "--no-wait"}, "scrub", func(c *commandLine) bool {
			s := c.Scrub
			return s.Tier == "s3" && s.Sample == "10%" && s.Rate == "50MiB" && s.NoWait
		}},
		{[]string{"scrub"}, "scrub", func(c *commandLine) bool { return c.Scrub.Sample == "100%" }},
		{[]string{"prune", "--apply", "--json"}, "prune", func(c *commandLine) bool { return c.Prune.Apply && c.Prune.JSON }},
		{[]string{"tape", "label", "emulator:/t", "--volume", "V1", "--pool", "p", "--capacity", "1GB", "--force"}, "tape label <device>",
			func(c *commandLine) bool {
				l := c.Tape.Label
				return l.Device == "emulator:/t" && l.Volume == "V1" && l.Pool == "p" && l.Capacity == "1GB" && l.Force && l.BlockSize == "512KiB" && l.Sequence == 1
			}},
		{[]string{"tape", "ls", "--device", "emulator:/t", "--json"}, "tape ls", func(c *commandLine) bool { return c.Tape.Ls.Device == "emulator:/t" && c.Tape.Ls.JSON }},
		{[]string{"tape", "verify", "V1", "--device", "emulator:/t"}, "tape verify <volume-or-device>", func(c *commandLine) bool {
			return c.Tape.Verify.Target == "V1" && c.Tape.Verify.Device == "emulator:/t"
		}},
		{[]string{"tape", "rebuild", "--tier-dir", "/c", "--tier", "hdd", "--host", "h", "--data", "/d"}, "tape rebuild", func(c *commandLine) bool {
			r := c.Tape.Rebuild
			return r.TierDir == "/c" && r.Tier == "hdd" && r.Host == "h" && c.Data == "/d"
		}},
		{[]string{"doctor", "--hot", "/a", "--hot", "/b", "--json"}, "doctor", func(c *commandLine) bool {
			return slices.Equal(c.Doctor.Hot, []string{"/a", "/b"}) && c.Doctor.JSON
		}},
		{[]string{"replay", "--verify", "--json"}, "replay", func(c *commandLine) bool { return c.Replay.Verify && c.Replay.JSON }},
		{[]string{"export", "--parquet", "/x"}, "export", func(c *commandLine) bool { return c.Export.Parquet == "/x" }},
		{[]string{"pin", "/a", "--json", "/b"}, "pin <path>", func(c *commandLine) bool { return c.Pin.JSON && len(c.Pin.Paths) == 2 }},
		{[]string{"unpin", "/a"}, "unpin <path>", func(c *commandLine) bool { return slices.Equal(c.Unpin.Paths, []string{"/a"}) }},
		{[]string{"version", "--json"}, "version", func(c *commandLine) bool { return c.Version.JSON }},
		{[]string{"completion", "fish"}, "completion <shell>", func(c *commandLine) bool { return c.Completion.Shell == "fish" }},
		{[]string{"interceptor-holder", "--socket", "/run/s"}, "interceptor-holder", func(c *commandLine) bool { return true }},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			c, cmd, err := parseArgs(t, tc.args...)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if cmd != tc.cmd {
				t.Fatalf("command %q, want %q", cmd, tc.cmd)
			}
			if !tc.check(c) {
				t.Fatalf("parsed wrong: %+v", c)
			}
		})
	}
}

// TestDataDirDefault: --data, else STRATA_DATA, else /var/lib/strata; and
// only an explicit --data overrides a config file's data_dir.
func TestDataDirDefault(t *testing.T) {
	t.Setenv("STRATA_DATA", "")
	if g := (globals{}); g.dataDir() != "/var/lib/strata" {
		t.Fatalf("default %q", g.dataDir())
	}
	t.Setenv("STRATA_DATA", "/env/data")
	if g := (globals{}); g.dataDir() != "/env/data" {
		t.Fatalf("from env %q", g.dataDir())
	}
	if g := (globals{Data: "/flag"}); g.dataDir() != "/flag" {
		t.Fatalf("from flag %q", g.dataDir())
	}
}

// TestUsageErrors: a wrong command line exits 2 with one line on stderr
// naming the problem and where to read help, and prints nothing else.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, "unknown command frobnicate"},
		{[]string{"stauts"}, `did you mean "status"`},
		{[]string{"ls", "--bogus", "/a"}, "unknown flag --bogus (see strata ls --help)"},
		{[]string{"status", "-x"}, "unknown flag -x"},
		{[]string{"ls"}, `expected "<path> ..."`},
		{[]string{"ls", "/a", "--limit", "many"}, `--limit: expected a valid 64 bit int but got "many"`},
		{[]string{"ls", "/a", "--limit"}, "--limit: missing value"},
		{[]string{"restore", "/a"}, "missing flags: --to=DEST"},
		{[]string{"restore", "--to", "/b"}, "restore needs PATH (or --file-id)"},
		{[]string{"archive", "/a", "--timeout", "soon"}, "--timeout"},
		{[]string{"events", "--since", "-1"}, "--since"},
		{[]string{"run", "extra"}, "unexpected argument extra"},
		{[]string{"prune", "now"}, "unexpected argument now"},
		{[]string{"policy"}, `expected "preview"`},
		{[]string{"tape"}, `expected one of "label", "ls", "verify", "rebuild"`},
		{[]string{"tape", "frob"}, "unexpected argument frob"},
		{[]string{"tape", "label", "emulator:/t"}, "missing flags: --pool=P"},
		{[]string{"tape", "ls"}, "missing flags: --device=DEVICE"},
		{[]string{"tape", "rebuild", "--tier", "t"}, "want --tier and either one DEVICE or --tier-dir DIR"},
		{[]string{"export"}, "missing flags: --parquet=DIR"},
		{[]string{"completion", "tcsh"}, `must be one of "bash","zsh","fish"`},
		{[]string{"scrub", "--sample", "lots"}, "--sample"},
		{[]string{"interceptor-holder"}, "missing flags: --socket=PATH"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, errs, code := cli(t, tc.args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, errs)
			}
			if strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "strata: usage: ") || !strings.Contains(errs, tc.want) {
				t.Fatalf("stderr %q, want one line containing %q", errs, tc.want)
			}
			if out != "" {
				t.Fatalf("stdout %q, want nothing", out)
			}
		})
	}
	// No command at all: the overview on stdout, exit 2.
	out, errs, code := cli(t)
	if code != exitUsage || !strings.Contains(out, "Commands:") || !strings.Contains(errs, "no command given") {
		t.Fatalf("no command: exit %d, %q, %q", code, out, errs)
	}
}

// commandPaths lists every command of the grammar ("tape label"), hidden
// ones too.
func commandPaths(t *testing.T) [][]string {
	t.Helper()
	k, _, err := newParser(&env{stdout: &strings.Builder{}, stderr: &strings.Builder{}})
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	var walk func(n *kong.Node, path []string)
	walk = func(n *kong.Node, path []string) {
		for _, c := range n.Children {
			if c.Type == kong.CommandNode {
				p := append(path[:len(path):len(path)], c.Name)
				out = append(out, p)
				walk(c, p)
			}
		}
	}
	walk(k.Model.Node, nil)
	return out
}

// TestHelp: --help (and -h, and strata help CMD) on every command and
// subcommand exits 0 and shows the usage, an example and the exit codes.
func TestHelp(t *testing.T) {
	paths := append(commandPaths(t), nil) // nil: strata --help
	if len(paths) < 20 {
		t.Fatalf("only %d commands in the grammar", len(paths))
	}
	for _, p := range paths {
		for _, form := range [][]string{append(slices.Clone(p), "--help"), append(slices.Clone(p), "-h"), append([]string{"help"}, p...)} {
			t.Run(strings.Join(form, " "), func(t *testing.T) {
				out, errs, code := cli(t, form...)
				if code != 0 || errs != "" {
					t.Fatalf("exit %d, stderr %q", code, errs)
				}
				for _, want := range []string{"Usage: strata " + strings.Join(p, " "), "Example:\n  strata", "Exit codes:"} {
					if !strings.Contains(out, want) {
						t.Errorf("help lacks %q:\n%s", want, out)
					}
				}
				for _, c := range exitCodes {
					if !strings.Contains(out, fmt.Sprintf("  %-4d %s\n", c.code, c.meaning)) {
						t.Errorf("help lacks exit code %d:\n%s", c.code, out)
					}
				}
			})
		}
	}
	// Help on a command line with a missing argument is still help.
	if out, _, code := cli(t, "restore", "--help"); code != 0 || !strings.Contains(out, "--file-id") {
		t.Fatalf("restore --help: exit %d\n%s", code, out)
	}
	// The holder stays out of the overview.
	out, _, _ := cli(t, "--help")
	if strings.Contains(out, "interceptor-holder") {
		t.Fatalf("strata --help shows the hidden holder:\n%s", out)
	}
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	if slices.Contains(names, "interceptor-holder") || !slices.Contains(names, "completion") || !slices.Contains(names, "tape") {
		t.Fatalf("commands(): %v", names)
	}
}

// TestExitCodes: the one switch maps each kind of error to its code, and
// the README lists every code.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{nil, 0},
		{errHelp, 0},
		{fmt.Errorf("parse: %w", errHelp), 0},
		{errors.New("boom"), 1},
		{fmt.Errorf("%w: no command given", errUsage), 2},
		{&exitError{exitDiffers, errors.New("catalog differs")}, 3},
		{&exitError{exitUnchecked, errors.New("3 copies were not checked")}, 4},
		{fmt.Errorf("request: %w", context.Canceled), 130},
	} {
		var b strings.Builder
		if got := exitCode(tc.err, &b); got != tc.code {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.code)
		}
		if (tc.code == 0) != (b.Len() == 0) || strings.Count(b.String(), "\n") > 1 {
			t.Errorf("exitCode(%v) printed %q", tc.err, b.String())
		}
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range exitCodes {
		if !strings.Contains(string(readme), fmt.Sprintf("| %d |", c.code)) {
			t.Errorf("README.md does not list exit code %d in a table row", c.code)
		}
	}
}

// TestFlagsAnywhereAgainstDaemon runs, against a daemon, the argument
// orders the README shows and that failed before, and --json on the read
// commands that gained it.
func TestFlagsAnywhereAgainstDaemon(t *testing.T) {
	data, files := t.TempDir(), t.TempDir()
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: files}}}) // ls lists files in hot trees only
	for _, n := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(files, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a, b := filepath.Join(files, "a"), filepath.Join(files, "b")

	var ls scanner.LsReply
	cliJSON(t, &ls, "ls", a, "--json", "--data", data)
	if len(ls.Files) != 1 || ls.Files[0].Path != a {
		t.Fatalf("ls PATH --json: %+v", ls)
	}
	cliJSON(t, &ls, "ls", a, "--json", b, "--data", data, "--limit", "10")
	if len(ls.Files) != 2 {
		t.Fatalf("ls A --json B: %+v", ls)
	}

	// restore PATH --to DEST reaches the daemon (which says the file was
	// never archived): a daemon's error, exit 1, not a usage error.
	_, errs, code := cli(t, "restore", a, "--to", filepath.Join(files, "a.restored"), "--data", data)
	if code != exitFailure || strings.Contains(errs, "usage") {
		t.Fatalf("restore PATH --to DEST: exit %d, %q", code, errs)
	}

	var st statusReply
	cliJSON(t, &st, "status", "--data", data, "--json")
	if st.Host != "testhost" {
		t.Fatalf("status --json: %+v", st)
	}
	var v versionReply
	cliJSON(t, &v, "version", "--json")
	if v.Version != version || v.Go == "" {
		t.Fatalf("version --json: %+v", v)
	}
	var preview map[string]any
	cliJSON(t, &preview, "policy", "preview", "--data", data, "--json")
	var prune map[string]any
	cliJSON(t, &prune, "prune", "--json", "--data", data)
	// doctor --json prints its report whatever it finds; the exit code
	// says whether a finding is a problem.
	out, errs, code := cli(t, "doctor", "--hot", files, "--json", "--data", data)
	var rep doctor.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor --json: %v (exit %d)\n%s%s", err, code, out, errs)
	}
	if (code == 0) != (rep.Problems == 0) || !slices.ContainsFunc(rep.Findings, func(f doctor.Finding) bool {
		return f.Check == doctor.CheckHotTree && f.Subject == files
	}) {
		t.Fatalf("doctor --json: exit %d, %+v", code, rep)
	}
}

// TestPinJSON: pin and unpin take --json, and flags after the paths.
func TestPinJSON(t *testing.T) {
	hot := stratatest.LoopMount(t, "ext4", 16<<20)
	data := t.TempDir()
	testDaemon(t, Config{DataDir: data, Hot: []HotConfig{{Path: hot}}})
	a := filepath.Join(hot, "a")
	var pr pinReply
	cliJSON(t, &pr, "pin", a, "--json", "--data", data)
	if !slices.Equal(pr.Pinned, []string{a}) {
		t.Fatalf("pin --json: %+v", pr)
	}
	pr = pinReply{}
	cliJSON(t, &pr, "unpin", "--data", data, a, "--json")
	if !slices.Equal(pr.Unpinned, []string{a}) || pr.Pinned != nil {
		t.Fatalf("unpin --json: %+v", pr)
	}
	if out, errs, code := cli(t, "pin", a, "--data", data); code != 0 || out != "pinned "+a+"\n" {
		t.Fatalf("pin: exit %d, %q %q", code, out, errs)
	}
}
