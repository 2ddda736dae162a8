//go:build linux

package interceptor

import (
	"os"
	"os/exec"
	"testing"

	"github.com/strata-hsm/strata/workers/stub"
)

// BenchmarkRuleLookup: what the rules cost an event on a stub. "first" is
// a process's first event (or one a second later): /proc read and rules
// matched; "recall" an event that may start a recall for a known process
// (its start time checked); "cached" any other event.
func BenchmarkRuleLookup(bb *testing.B) {
	cfg := NewConfig()
	cfg.Rules = []Rule{
		{Exe: []string{"tar", "/opt/backup/**"}, Action: ActionDeny},
		{UID: []int64{4242}, Action: ActionThrottle, BytesPerSec: 1 << 20},
		{Cgroup: []string{"/system.slice/tumblerd.service"}, Action: ActionHeadOnly},
	}
	// A one-threaded program, as most that read stubs are (stat of a
	// process sums over its threads).
	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		bb.Skip(err)
	}
	defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
	pid := int32(sleep.Process.Pid)
	storm := NewConfig()
	for _, c := range []struct {
		name string
		cfg  *Config
	}{{"first/rules", &cfg}, {"first/storm-only", &storm}} {
		bb.Run(c.name, func(bb *testing.B) {
			ru := newRules(c.cfg)
			for bb.Loop() {
				clear(ru.procs.m)
				if _, s := ru.lookup(pid, true); s.rule != nil {
					bb.Fatal("matched")
				}
			}
		})
	}
	ru := newRules(&cfg)
	ru.lookup(pid, true)
	bb.Run("recall", func(bb *testing.B) {
		for bb.Loop() {
			ru.lookup(pid, true)
		}
	})
	bb.Run("cached", func(bb *testing.B) {
		for bb.Loop() {
			ru.lookup(pid, false)
		}
	})
}

// TestParseProc: the /proc formats the rules read.
func TestParseProc(t *testing.T) {
	start, comm, err := parseStat([]byte("4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"))
	if err != nil || start != 987654 || comm != "a (b) c" {
		t.Fatalf("parseStat: %d %q %v", start, comm, err)
	}
	if _, _, err := parseStat([]byte("4242 (x) S 1")); err == nil {
		t.Fatal("parseStat of a short line: no error")
	}
	if u, ok := parseStatusUID([]byte("Name:\tcat\nUid:\t1000\t34\t34\t34\nGid:\t0\n")); !ok || u != 34 {
		t.Fatalf("parseStatusUID: %d %v", u, ok)
	}
	if cg := parseCgroup([]byte("9:name=systemd:/\n0::/system.slice/backup.service\n")); cg != "/system.slice/backup.service" {
		t.Fatalf("parseCgroup: %q", cg)
	}
	if f, ok := fdinfoFlags([]byte("pos:\t0\nflags:\t0100002\nmnt_id:\t30\n")); !ok || f != 0o100002 {
		t.Fatalf("fdinfoFlags: %o %v", f, ok)
	}
}

// TestChargeEndsWithRecall: a throttled recall that completes is charged
// no more, and the Config's own OnComplete still runs.
func TestChargeEndsWithRecall(t *testing.T) {
	cfg := NewConfig()
	cfg.Rules = []Rule{{Comm: []string{"dd"}, Action: ActionThrottle, BytesPerSec: 1 << 20}}
	var called int
	cfg.OnComplete = func(Completion) { called++ }
	ru := newRules(&cfg)
	info := stub.Info{FileID: "f", ReleaseID: "r1"}
	ru.setCharge(info, ru.list[0])
	if !ru.throttled(info) {
		t.Fatal("not charged")
	}
	cfg.OnComplete(Completion{FileID: "f", ReleaseID: "r1"})
	if ru.throttled(info) || called != 1 {
		t.Fatalf("after completion: charged %v, OnComplete called %d times", ru.throttled(info), called)
	}
}

// TestRuleMatch: which processes a rule takes.
func TestRuleMatch(t *testing.T) {
	tar := &procSnap{comm: "tar", exe: "/usr/bin/tar", uid: 34, uidOK: true, cgroup: "/system.slice/backup.service"}
	job := &procSnap{comm: "python3", exe: "/opt/backup/venv/bin/python3.11", uid: 0, uidOK: true, cgroup: "/system.slice/backup.service/job-7"}
	user := &procSnap{comm: "cat", exe: "/usr/bin/cat", uid: 1000, uidOK: true, cgroup: "/user.slice/user-1000.slice/session-2.scope"}
	gone := &procSnap{}
	for _, tc := range []struct {
		rule Rule
		want []*procSnap
	}{
		{Rule{Exe: []string{"tar"}}, []*procSnap{tar}},
		{Rule{Exe: []string{"/usr/bin/tar"}}, []*procSnap{tar}},
		{Rule{Exe: []string{"/bin/tar"}}, nil}, // exe is the resolved path
		{Rule{Exe: []string{"/usr/bin/*"}}, []*procSnap{tar, user}},
		{Rule{Exe: []string{"/opt/backup/**"}}, []*procSnap{job}},
		{Rule{Exe: []string{"python3*"}}, []*procSnap{job}},
		{Rule{Comm: []string{"ta?", "ca*"}}, []*procSnap{tar, user}},
		{Rule{UID: []int64{34, 1000}}, []*procSnap{tar, user}},
		{Rule{UID: []int64{0}}, []*procSnap{job}},
		{Rule{Cgroup: []string{"/system.slice/backup.service"}}, []*procSnap{tar, job}},
		{Rule{Cgroup: []string{"/system.slice/backup"}}, nil},
		{Rule{Cgroup: []string{"/user.slice/*/session-*.scope"}}, []*procSnap{user}},
		{Rule{Cgroup: []string{"/"}}, []*procSnap{tar, job, user}},
		{Rule{Exe: []string{"tar"}, UID: []int64{0}}, nil}, // every key must match
		{Rule{Comm: []string{"python3"}, Cgroup: []string{"/system.slice/backup.service"}}, []*procSnap{job}},
	} {
		c := compileRules([]Rule{tc.rule})[0]
		for _, s := range []*procSnap{tar, job, user, gone} {
			want := false
			for _, w := range tc.want {
				want = want || w == s
			}
			if got := c.matches(s); got != want {
				t.Errorf("rule %+v on %+v: %v, want %v", tc.rule, *s, got, want)
			}
		}
	}
}

// TestFirstRuleDecides: of the rules that match a process, the first
// decides (a recall rule first exempts programs from the rules after it).
func TestFirstRuleDecides(t *testing.T) {
	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
	pid := int32(sleep.Process.Pid)
	exempt := Rule{Name: "exempt", Comm: []string{"sleep"}, Action: ActionRecall}
	all := Rule{Name: "all", UID: []int64{int64(os.Getuid())}, Action: ActionDeny}
	for _, tc := range []struct {
		rules []Rule
		want  string
	}{
		{[]Rule{exempt, all}, "exempt"},
		{[]Rule{all, exempt}, "all"},
	} {
		cfg := NewConfig()
		cfg.Rules = tc.rules
		if _, s := newRules(&cfg).lookup(pid, true); s.rule == nil || s.rule.Name != tc.want {
			t.Errorf("rules %v: matched %+v, want %s", tc.rules, s.rule, tc.want)
		}
	}
}
