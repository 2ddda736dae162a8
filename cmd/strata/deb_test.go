package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// debVersion is the version TestDebPackage builds the package with.
const debVersion = "0.0.0~test1"

// TestDebPackage builds the .deb with `go tool task package`, installs it
// on this machine with dpkg -i, runs the installed strata (--version,
// doctor), then removes and purges it and checks that every file it
// installed is gone. It refuses to run where Strata is installed already
// (it would replace and then remove it).
func TestDebPackage(t *testing.T) {
	stratatest.NeedRoot(t)
	stratatest.NeedTool(t, "dpkg")
	stratatest.NeedTool(t, "dpkg-deb")
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "strata").Output(); err == nil && strings.Contains(string(out), "installed") {
		stratatest.Skip(t, "a strata package is installed on this machine (%s): installing this one would replace it", out)
	}
	for _, p := range []string{"/usr/bin/strata", "/etc/strata", "/lib/systemd/system/strata.service", "/lib/systemd/system/strata-holder.service"} {
		if _, err := os.Lstat(p); err == nil {
			stratatest.Skip(t, "%s exists and belongs to no package: installing would overwrite it", p)
		}
	}

	out := t.TempDir()
	build := exec.Command("go", "tool", "task", "package")
	build.Dir = filepath.Join("..", "..")
	build.Env = append(os.Environ(), "OUT="+out, "VERSION="+debVersion)
	var stdout, stderr bytes.Buffer
	build.Stdout, build.Stderr = &stdout, &stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go tool task package: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	deb := lines[len(lines)-1]
	if !filepath.IsAbs(deb) {
		deb = filepath.Join(build.Dir, deb)
	}
	if fi, err := os.Stat(deb); err != nil || fi.Size() == 0 {
		t.Fatalf("no package at %q: %v\n%s", deb, err, stderr.String())
	}
	if v := run1(t, "dpkg-deb", "-f", deb, "Version"); v != debVersion {
		t.Errorf("package version %q, want %q", v, debVersion)
	}
	listing := run1(t, "dpkg-deb", "-c", deb)
	want := []string{"./usr/bin/strata", "./lib/systemd/system/strata.service", "./lib/systemd/system/strata-holder.service",
		"./etc/strata/strata.example.toml", "./usr/share/man/man1/strata.1.gz", "./usr/share/man/man1/strata-archive.1.gz",
		"./usr/share/man/man1/strata-tape-label.1.gz", "./usr/share/bash-completion/completions/strata",
		"./usr/share/zsh/vendor-completions/_strata", "./usr/share/fish/vendor_completions.d/strata.fish",
		"./usr/share/doc/strata/OPERATIONS.md"}
	for _, w := range want {
		if !strings.Contains(listing, w+"\n") && !strings.HasSuffix(listing, w) {
			t.Errorf("the package lacks %s:\n%s", w, listing)
		}
	}
	if conf := run1(t, "sh", "-c", "dpkg-deb --ctrl-tarfile "+deb+" | tar -xO ./conffiles"); conf != "/etc/strata/strata.example.toml" {
		t.Errorf("conffiles: %q", conf)
	}

	installed := false
	t.Cleanup(func() {
		if installed {
			if out, err := exec.Command("dpkg", "--purge", "strata").CombinedOutput(); err != nil {
				t.Errorf("cleanup: dpkg --purge strata: %v\n%s", err, out)
			}
		}
	})
	installed = true
	if out, err := exec.Command("dpkg", "-i", deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	files := strings.Split(run1(t, "dpkg", "-L", "strata"), "\n")

	if v := run1(t, "/usr/bin/strata", "--version"); v != "strata "+debVersion {
		t.Errorf("strata --version: %q", v)
	}
	for _, unit := range []string{"strata.service", "strata-holder.service"} {
		b, err := os.ReadFile("/lib/systemd/system/" + unit)
		if err != nil || !strings.Contains(string(b), "ExecStart=/usr/bin/strata ") {
			t.Errorf("%s: %v; want ExecStart=/usr/bin/strata:\n%s", unit, err, b)
		}
	}
	// doctor runs from the package; with no daemon it says so and what
	// to do, and exits 1.
	doc := exec.Command("/usr/bin/strata", "doctor", "--data", t.TempDir())
	docOut, err := doc.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailure || !strings.Contains(string(docOut), "PROBLEM  daemon") || !strings.Contains(string(docOut), "systemctl start strata") {
		t.Errorf("strata doctor with no daemon: %v, want exit 1 naming the daemon:\n%s", err, docOut)
	}
	// The man page is roff, the completions load.
	if f, err := os.Open("/usr/share/man/man1/strata.1.gz"); err != nil {
		t.Error(err)
	} else {
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(zr)
		f.Close()
		if !strings.Contains(string(b), ".TH STRATA 1") || !strings.Contains(string(b), "strata archive") {
			t.Errorf("strata.1 is not the man page:\n%.300s", b)
		}
	}
	if out := run1(t, "bash", "-c", "source /usr/share/bash-completion/completions/strata && complete -p strata"); !strings.Contains(out, "strata") {
		t.Errorf("bash completion: %q", out)
	}

	// Remove: everything but the configuration goes; purge takes that too.
	if out, err := exec.Command("dpkg", "-r", "strata").CombinedOutput(); err != nil {
		t.Fatalf("dpkg -r: %v\n%s", err, out)
	}
	if _, err := os.Stat("/usr/bin/strata"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after dpkg -r, /usr/bin/strata: %v", err)
	}
	if _, err := os.Stat("/etc/strata/strata.example.toml"); err != nil {
		t.Errorf("dpkg -r removed the conffile (only purge should): %v", err)
	}
	if out, err := exec.Command("dpkg", "--purge", "strata").CombinedOutput(); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, out)
	}
	installed = false
	if st, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "strata").Output(); strings.Contains(string(st), "installed") {
		t.Errorf("after purge: %s", st)
	}
	for _, f := range append(files, "/etc/strata") {
		if f == "" || f == "/." || sharedDir(f) {
			continue
		}
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after purge, %s is still there (%v)", f, err)
		}
	}
}

// sharedDir reports whether a path the package lists is a directory other
// packages share (/usr, /usr/share/man/man1, /lib which may be a link to
// /usr/lib, ...): dpkg leaves those.
func sharedDir(p string) bool {
	fi, err := os.Stat(p)
	if err != nil || !fi.IsDir() {
		return false
	}
	return !strings.Contains(p, "strata")
}

// run1 runs a program and returns its trimmed stdout, failing the test on
// error.
func run1(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%s %v: %v\n%s", name, args, err, ee.Stderr)
		}
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return strings.TrimSpace(string(out))
}
