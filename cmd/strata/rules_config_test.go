package main

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestRulesThroughDaemon: [[interceptor.rule]] and the storm settings of
// the configuration reach the daemon's interceptor: tar, denied by a
// rule, cannot read the archived tree and nothing is recalled; cat reading
// the whole tree in one process is a storm, published as recall.storm in
// the event log with the process's name; strata status counts both.
func TestRulesThroughDaemon(t *testing.T) {
	stratatest.NeedRoot(t)
	tarBin := stratatest.NeedTool(t, "tar")
	hot := stratatest.LoopMount(t, "ext4", 128<<20)
	files := testFiles(t, filepath.Join(hot, "tree"), 71)
	data, cold := t.TempDir(), t.TempDir()
	cfg := Config{DataDir: data, Hot: []HotConfig{{Path: hot}}, Tiers: []TierConfig{{Name: "hdd", Kind: events.TierDirectory, Path: cold}}}
	cfg.Interceptor.Rules = []RuleConfig{{Name: "backup", Exe: []string{"tar"}, Action: "deny"}}
	cfg.Interceptor.StormRecalls, cfg.Interceptor.StormWindow = len(files), duration(10*time.Second)
	testDaemon(t, cfg)
	var sum archiveSummary
	cliJSON(t, &sum, "archive", "--wait", "--timeout", "2m", "--json", "--data", data, hot)
	if sum.Released != len(files) {
		t.Fatalf("archive: %+v", sum)
	}

	var stdout, stderr bytes.Buffer
	tar := exec.Command(tarBin, "-cf", "-", "-C", hot, "tree")
	tar.Stdout, tar.Stderr = &stdout, &stderr // not /dev/null: GNU tar would read nothing
	if err := tar.Run(); err == nil || strings.Count(stderr.String(), "Operation not permitted") != len(files) {
		t.Fatalf("tar under a deny rule: %v: %s", err, stderr.String())
	}
	logged := func() []events.Event {
		out, _, _ := cli(t, "events", "--json", "--data", data)
		var evs []events.Event
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			_, ev, err := events.Decode([]byte(line))
			if err != nil {
				t.Fatal(err)
			}
			evs = append(evs, ev)
		}
		return evs
	}
	if slices.ContainsFunc(logged(), func(ev events.Event) bool { _, ok := ev.(*events.RecallRequested); return ok }) {
		t.Fatal("a denied tar started a recall")
	}

	paths := slices.Sorted(func(yield func(string) bool) {
		for p := range files {
			if !yield(p) {
				return
			}
		}
	})
	out, err := exec.Command("cat", paths...).Output()
	var want []byte
	for _, p := range paths {
		want = append(want, files[p]...)
	}
	if err != nil || !bytes.Equal(out, want) {
		t.Fatalf("cat of the tree: %v, %d bytes, want %d", err, len(out), len(want))
	}
	waitFor(t, 30*time.Second, func() error {
		for _, ev := range logged() {
			if s, ok := ev.(*events.RecallStorm); ok {
				if s.Process != "cat" || s.Recalls != int64(len(files)) || !slices.Contains(paths, s.Path) {
					t.Fatalf("recall.storm %+v", s)
				}
				return nil
			}
		}
		return errors.New("no recall.storm in the log")
	})

	// strata status counts what the rule did and the storm.
	var st statusReply
	cliJSON(t, &st, "status", "--json", "--data", data)
	if len(st.RecallRules) != 1 || st.RecallRules[0].Name != "backup" || st.RecallRules[0].Denied < uint64(len(files)) || st.RecallStorms != 1 {
		t.Fatalf("status: rules %+v, storms %d", st.RecallRules, st.RecallStorms)
	}
	text, errs, code := cli(t, "status", "--data", data)
	if code != 0 || !strings.Contains(text, "recall rule backup") || !strings.Contains(text, "recall storms") {
		t.Fatalf("status: %d %s%s", code, text, errs)
	}
}
