package pipeline

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type logLines struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logLines) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), sub)
}

// TestConditionsLogOnce: a condition set on every retry logs one line when
// it begins, a reminder at most every Remind while it lasts, one line when
// it ends; one that begins again soon after it ended (a flapping
// filesystem) is shown but not logged again until Remind has passed.
func TestConditionsLogOnce(t *testing.T) {
	var logs logLines
	cs := NewConditions(slog.New(slog.NewTextHandler(&logs, nil)))
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	cs.now = func() time.Time { return now }
	cond := Condition{Key: "space:data", Kind: KindNoSpace, Place: "data directory", Path: "/var/lib/strata", Hint: "free space"}
	changed := cs.Changed()
	for i := 0; i < 1000; i++ {
		cond.LastError = "write: no space left on device"
		cs.Set(cond)
		now = now.Add(100 * time.Millisecond) // 100 s in all
	}
	select {
	case <-changed:
	default:
		t.Error("Changed not closed when the condition began")
	}
	if n := logs.count("out of space: data directory"); n != 1 {
		t.Fatalf("%d lines for one condition set 1000 times, want 1:\n%s", n, logs.b.String())
	}
	got, ok := cs.Get("space:data")
	if !ok || got.Since != time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC) || got.LastError == "" {
		t.Fatalf("condition in force: %+v %v", got, ok)
	}
	now = now.Add(DefaultRemind)
	cs.Set(cond)
	cs.Set(cond)
	if n := logs.count("still out of space: data directory"); n != 1 {
		t.Fatalf("%d reminders after Remind, want 1", n)
	}
	cs.Clear("space:data")
	cs.Clear("space:data")
	if n := logs.count("space is back: data directory"); n != 1 {
		t.Fatalf("%d lines for the end, want 1", n)
	}
	if len(cs.List()) != 0 {
		t.Fatalf("conditions after clear: %+v", cs.List())
	}
	// Flapping: set again a second later, cleared again.
	now = now.Add(time.Second)
	cs.Set(cond)
	if _, ok := cs.Get("space:data"); !ok {
		t.Fatal("a condition that began again is not shown")
	}
	cs.Clear("space:data")
	if n := logs.count("out of space: data directory"); n != 2 { // the first and the reminder
		t.Fatalf("flapping logged again: %d lines\n%s", n, logs.b.String())
	}
	if n := logs.count("space is back"); n != 1 {
		t.Fatalf("flapping logged its end: %d lines", n)
	}
	now = now.Add(DefaultRemind)
	cs.Set(cond)
	if n := logs.count("level=ERROR msg=\"out of space: data directory\""); n != 2 {
		t.Fatalf("a condition beginning Remind after the last line is logged: %d lines\n%s", n, logs.b.String())
	}
}
