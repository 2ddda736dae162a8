package doctor

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClock: a clock before the floor or behind the newest event of the
// log is a problem saying how to set it; otherwise it is at worst a
// warning (NTP not in step on this machine).
func TestClock(t *testing.T) {
	floor := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := time.Now()
	for _, c := range []struct {
		name      string
		now, last time.Time
		problem   bool
		want      string
	}{
		{"1970", time.Unix(0, 0), time.Time{}, true, "the clock is wrong"},
		{"went back", now, now.Add(2 * time.Hour), true, "the clock went back"},
		{"a little behind the log", now, now.Add(30 * time.Second), false, ""},
		{"empty log", now, time.Time{}, false, ""},
	} {
		f := Clock(c.now, c.last, floor)
		if (f.Status == Problem) != c.problem || !strings.Contains(f.Detail, c.want) || (f.Status != OK && f.Fix == "") {
			t.Errorf("%s: %+v", c.name, f)
		}
	}
}

// TestReport: counts, the error naming the problems, and the text form
// with each fix under its finding.
func TestReport(t *testing.T) {
	var r Report
	r.Add(Finding{Check: CheckDaemon, Subject: "/d", Status: OK, Detail: "up"},
		Tier("t1", "s3", true, time.Second, errors.Join(errors.New("put: access denied"), syscall.EACCES), false),
		Finding{Check: CheckClock, Status: Warning, Detail: "not in step", Fix: "timedatectl set-ntp true"})
	if r.Problems != 1 || r.Warnings != 1 {
		t.Fatalf("counts: %+v", r)
	}
	if err := r.Err(); !errors.Is(err, ErrProblems) || !strings.Contains(err.Error(), "tier t1") {
		t.Errorf("Err: %v", err)
	}
	var b strings.Builder
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PROBLEM  tier t1", "→ the tier refuses writes", "warning  clock", "3 checks: 1 problems, 1 warnings"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}

// TestNATS: a client listener off loopback is a problem (no TLS on the
// client port); loopback with a daemon answering is ok.
func TestNATS(t *testing.T) {
	if f := NATS("0.0.0.0", 4250, "", false); f.Status != Problem || !strings.Contains(f.Fix, "127.0.0.1") {
		t.Errorf("0.0.0.0: %+v", f)
	}
	if f := NATS("192.0.2.7", 4250, "nats://192.0.2.7:4250", true); f.Status != Problem {
		t.Errorf("192.0.2.7 with a daemon: %+v", f)
	}
	if f := NATS("127.0.0.1", 4250, "nats://127.0.0.1:4250", true); f.Status != OK {
		t.Errorf("loopback: %+v", f)
	}
}
