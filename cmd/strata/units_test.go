package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestSystemdUnits: the units in dist/systemd pass systemd-analyze verify
// (with the binary where they expect it), the holder is its own unit that
// the daemon's wants and starts after, and the command lines they run are
// ones this binary accepts.
func TestSystemdUnits(t *testing.T) {
	analyze := stratatest.NeedTool(t, "systemd-analyze")
	bin := buildStrata(t)
	dir := t.TempDir()
	units := map[string]string{}
	for _, name := range []string{"strata.service", "strata-holder.service"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "dist", "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		units[name] = string(b)
		local := strings.ReplaceAll(string(b), "/usr/local/bin/strata", bin)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(local), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(analyze, "verify", filepath.Join(dir, "strata.service"), filepath.Join(dir, "strata-holder.service"))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, want := range []string{"Wants=strata-holder.service", "After=strata-holder.service"} {
		if !strings.Contains(units["strata.service"], want) {
			t.Errorf("strata.service lacks %s: stopping it would end the holder with it", want)
		}
	}
	// What the daemon and the holder implement (sdnotify.go; TestNotify
	// runs both with these settings' environment and bounds).
	for name, wants := range map[string][]string{
		"strata.service": {"Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure",
			// a holder the daemon started itself must outlive it (README)
			"KillMode=process", "CapabilityBoundingSet=", "NoNewPrivileges=yes"},
		"strata-holder.service": {"Type=notify", "NotifyAccess=main", "Restart=on-failure", "CapabilityBoundingSet=", "NoNewPrivileges=yes"},
	} {
		for _, want := range wants {
			if !strings.Contains("\n"+units[name], "\n"+want) {
				t.Errorf("%s lacks %s", name, want)
			}
		}
	}
	for name, u := range units {
		for _, line := range strings.Split(u, "\n") {
			args, ok := strings.CutPrefix(line, "ExecStart=/usr/local/bin/strata ")
			if !ok {
				continue
			}
			// The same words with --help: parsed by the real grammar.
			out, err := exec.Command(bin, append(strings.Fields(args), "--help")...).CombinedOutput()
			if err != nil {
				t.Errorf("%s: %s is not a command line strata accepts: %v\n%s", name, line, err, out)
			}
		}
	}
	if !strings.Contains(units["strata-holder.service"], "--socket "+holderSocket(defaultDataDir)) {
		t.Errorf("strata-holder.service does not listen where the daemon of %s looks for its holder (%s)", defaultDataDir, holderSocket(defaultDataDir))
	}
}
