package progress

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineWriter hands every Write to the test.
type lineWriter chan string

func (w lineWriter) Write(b []byte) (int, error) { w <- string(b); return len(b), nil }

// fakeClock is a Clock the test moves by hand.
type fakeClock struct {
	mu   sync.Mutex
	t    time.Time
	tick chan time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// advance moves the clock by d and ticks.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	t := c.t
	c.mu.Unlock()
	c.tick <- t
}

func (c *fakeClock) clock() Clock {
	return Clock{Now: c.now, Tick: c.tick}
}

func nextLine(t *testing.T, w lineWriter) string {
	t.Helper()
	select {
	case l := <-w:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no progress line")
		return ""
	}
}

// TestProgressPlainLines: off a terminal, progress writes a plain line on
// every tick (PlainEvery), also while nothing moves, then a last line at
// Finish, and nothing after; a command that ends before the first tick
// writes nothing.
func TestProgressPlainLines(t *testing.T) {
	w := make(lineWriter, 10)
	c := &fakeClock{t: time.Unix(1e9, 0), tick: make(chan time.Time)}
	p := Start(w, false, "archive", "bytes", 100<<20, c.clock())
	p.Set(10<<20, 0, "1/4 files")
	c.advance(5 * time.Second)
	if got, want := nextLine(t, w), "archive: 10% 10.0 MiB/100.0 MiB, 2.0 MiB/s ETA 45s, 1/4 files\n"; got != want {
		t.Fatalf("first line %q, want %q", got, want)
	}
	c.advance(5 * time.Second) // stalled: the line still comes
	if got, want := nextLine(t, w), "archive: 10% 10.0 MiB/100.0 MiB, 1.0 MiB/s ETA 1m30s, 1/4 files\n"; got != want {
		t.Fatalf("stalled line %q, want %q", got, want)
	}
	p.Set(100<<20, 0, "4/4 files")
	p.Finish()
	if got, want := nextLine(t, w), "archive: 100% 100.0 MiB/100.0 MiB, 10.0 MiB/s, 4/4 files\n"; got != want {
		t.Fatalf("last line %q, want %q", got, want)
	}
	p.Finish() // idempotent
	p.Set(1, 1, "")
	select {
	case l := <-w:
		t.Fatalf("a line after Finish: %q", l)
	default:
	}

	// Unknown total, other units.
	p = Start(w, false, "read tape", "objects", 0, c.clock())
	p.Set(7, 0, "")
	c.advance(time.Second)
	if got, want := nextLine(t, w), "read tape: 7 objects, 7 objects/s\n"; got != want {
		t.Fatalf("line %q, want %q", got, want)
	}
	p.Finish()
	nextLine(t, w)

	// Done before the first tick: quiet.
	p = Start(w, false, "replay", "events", 10, c.clock())
	p.Set(10, 0, "")
	p.Finish()
	select {
	case l := <-w:
		t.Fatalf("a short command wrote %q", l)
	default:
	}
}

// TestProgressTerminal: on a terminal the line is redrawn in place (at
// most every 200ms) and ended at Finish.
func TestProgressTerminal(t *testing.T) {
	var b bytes.Buffer
	c := &fakeClock{t: time.Unix(1e9, 0)}
	p := Start(&b, true, "replay", "events", 200, c.clock())
	c.t = c.t.Add(time.Second)
	p.Set(50, 0, "")
	p.Set(60, 0, "") // within 200ms: not drawn
	p.Finish()
	out := b.String()
	if strings.Count(out, "\r") != 2 || !strings.HasSuffix(out, "\n\x1b[K") ||
		!strings.Contains(out, "\rreplay [#######.......................]  25% 50/200 events, 50 events/s ETA 3s ") ||
		!strings.Contains(out, "\rreplay [#########.....................]  30% 60/200 events, 60 events/s \n") {
		t.Fatalf("terminal output %q", out)
	}
}

// TestProgressNotTerminal: New on a buffer (not a terminal) draws
// no bar, and Finish before the first line leaves it empty.
func TestProgressNotTerminal(t *testing.T) {
	var b bytes.Buffer
	p := New(&b, "scrub", "bytes", 0)
	p.Set(1<<20, 2<<20, "1/2 copies")
	p.Finish()
	if b.Len() != 0 {
		t.Fatalf("wrote %q", b.String())
	}
	var nilp *Bar
	nilp.Set(1, 2, "")
	nilp.Finish()
}
