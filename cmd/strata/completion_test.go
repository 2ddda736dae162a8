package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// completionCases are command lines (completed at their end) and words
// the completion must and must not offer. DIR is a directory holding
// hotdir/ and afile.
var completionCases = []struct {
	line       string
	want, deny []string
}{
	{"strata ", []string{"run", "status", "ls", "tape", "completion", "version"}, []string{"interceptor-holder", "--data"}},
	{"strata ta", []string{"tape"}, []string{"status"}},
	{"strata tape ", []string{"label", "ls", "verify", "rebuild"}, []string{"status"}},
	{"strata --data /tmp tape l", []string{"label", "ls"}, []string{"verify", "rebuild"}},
	{"strata policy ", []string{"preview"}, nil},
	{"strata ls --j", []string{"--json"}, []string{"--limit"}},
	{"strata tape label --", []string{"--pool", "--volume", "--block-size", "--force", "--data", "--help"}, []string{"--limit", "--socket"}},
	{"strata restore --", []string{"--to", "--version", "--file-id", "--json"}, []string{"--wait"}},
	{"strata completion ", []string{"bash", "zsh", "fish"}, nil},
	{"strata interc", nil, []string{"interceptor-holder"}},
	{"strata run --hot DIR/", []string{"hotdir"}, []string{"afile"}},
	{"strata ls DIR/a", []string{"afile"}, []string{"hotdir"}},
}

// completionDir makes DIR for completionCases.
func completionDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "hotdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "afile"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// completionScript writes `strata completion SHELL` to a file.
func completionScript(t *testing.T, shell string) string {
	t.Helper()
	out, errs, code := cli(t, "completion", shell)
	if code != 0 || errs != "" || !strings.Contains(out, "strata") {
		t.Fatalf("strata completion %s: exit %d, %q", shell, code, errs)
	}
	p := filepath.Join(t.TempDir(), "strata."+shell)
	if err := os.WriteFile(p, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkCompletions runs complete(line) for every case.
func checkCompletions(t *testing.T, complete func(line string) string) {
	dir := completionDir(t)
	for _, tc := range completionCases {
		line := strings.ReplaceAll(tc.line, "DIR", dir)
		t.Run(tc.line, func(t *testing.T) {
			got := complete(line)
			words := strings.Fields(got)
			has := func(w string) bool {
				for _, g := range words {
					if g == w || strings.HasSuffix(strings.TrimSuffix(g, "/"), "/"+w) {
						return true
					}
				}
				return false
			}
			for _, w := range tc.want {
				if !has(w) {
					t.Errorf("%q does not offer %q; offers %q", line, w, got)
				}
			}
			for _, w := range tc.deny {
				if has(w) {
					t.Errorf("%q offers %q: %q", line, w, got)
				}
			}
		})
	}
}

func shell(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir(), "XDG_DATA_HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %v: %v\n%s%s", name, args, err, out, stderr)
	}
	return string(out)
}

// TestCompletionBash loads the script as a user would (source, then
// complete -p) and calls its function the way bash's completion does.
func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	script := completionScript(t, "bash")
	if got := shell(t, bash, "-c", `source "$1" && complete -p strata`, "-", script); strings.TrimSpace(got) != "complete -F _strata strata" {
		t.Fatalf("complete -p strata: %q", got)
	}
	checkCompletions(t, func(line string) string {
		return shell(t, bash, "-c", `source "$1"
read -ra COMP_WORDS <<< "$2"
[[ $2 == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_strata
printf '%s\n' "${COMPREPLY[@]}"`, "-", script, line)
	})
}

// TestCompletionZsh types each line and a Tab into an interactive zsh on a
// pseudo-terminal (testdata/complete.zsh) and reads what it offers.
func TestCompletionZsh(t *testing.T) {
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		t.Skip("no zsh (scripts/setup.sh installs it)")
	}
	script := completionScript(t, "zsh")
	shell(t, zsh, "-n", script)
	harness, err := filepath.Abs(filepath.Join("testdata", "complete.zsh"))
	if err != nil {
		t.Fatal(err)
	}
	checkCompletions(t, func(line string) string {
		return shell(t, zsh, "-f", harness, script, line)
	})
}

// TestCompletionFish asks fish itself (complete -C) what it offers.
func TestCompletionFish(t *testing.T) {
	fish, err := exec.LookPath("fish")
	if err != nil {
		t.Skip("no fish (scripts/setup.sh installs it)")
	}
	script := completionScript(t, "fish")
	shell(t, fish, "-n", script)
	checkCompletions(t, func(line string) string {
		out := shell(t, fish, "--no-config", "-c", `source $argv[1]; complete -C $argv[2]`, script, line)
		var words []string
		for _, l := range strings.Split(out, "\n") {
			words = append(words, strings.SplitN(l, "\t", 2)[0]) // drop the description
		}
		return strings.Join(words, "\n")
	})
}

// TestManpages: strata manpages writes strata.1 and one page per visible
// command (none for hidden ones), each naming its flags, and man(1)
// formats every page without a warning.
func TestManpages(t *testing.T) {
	dir := t.TempDir()
	if out, errs, code := cli(t, "manpages", "--dir", dir, "--date", "2026-12-03"); code != 0 {
		t.Fatalf("manpages: exit %d %s%s", code, out, errs)
	}
	k, _, err := newParser(&env{stdout: io.Discard, stderr: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	var visible []string
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, c := range n.Children {
			if c.Type == kong.CommandNode && !c.Hidden {
				visible = append(visible, strings.ReplaceAll(c.FullPath(), " ", "-"))
				walk(c)
			}
		}
	}
	walk(k.Model.Node)
	if len(visible) < 20 {
		t.Fatalf("only %d visible commands: %v", len(visible), visible)
	}
	for _, name := range visible {
		page := filepath.Join(dir, name+".1")
		b, err := os.ReadFile(page)
		if err != nil {
			t.Errorf("no page for %s: %v", name, err)
			continue
		}
		for _, want := range []string{".TH STRATA\\-", ".SH NAME", ".SH SYNOPSIS", ".SH FLAGS", "\\-\\-help", ".SH EXIT STATUS"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s lacks %q", page, want)
			}
		}
	}
	mainPage, err := os.ReadFile(filepath.Join(dir, "strata.1"))
	if err != nil || !strings.Contains(string(mainPage), ".SS strata archive") || strings.Contains(string(mainPage), "interceptor\\-holder") {
		t.Errorf("strata.1: %v (want every command, not the hidden holder)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "strata-manpages.1")); err == nil {
		t.Error("a page for the hidden manpages command")
	}
	man := stratatest.NeedTool(t, "man")
	pages, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	cmd := exec.Command(man, append([]string{"--warnings", "-l"}, pages...)...)
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=80")
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("man --warnings: %v\n%s", err, stderr.String())
	}
}
