// Package progress shows how a long command advances: a bar redrawn in
// place on a terminal, a plain line every few seconds anywhere else (a
// log, a pipe, a systemd unit). Only cmd/strata imports it.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// PlainEvery is how often a progress line is written when stderr is not a
// terminal (a log, a pipe, a systemd unit).
const PlainEvery = 5 * time.Second

// Bar shows how a long command advances (done/total, rate, ETA). On a
// terminal it redraws one line in place, at most five times a second; on
// anything else it writes a plain line every PlainEvery (even while
// nothing moves, so a log shows the command is alive), and a last one at
// Finish if it wrote any. Every method is safe for concurrent use and on a
// nil *progress.
type Bar struct {
	w      io.Writer
	tty    bool
	clock  Clock
	stop   chan struct{} // closed by Finish; ends the plain-line goroutine
	exited chan struct{} // closed when the plain-line goroutine has returned

	mu       sync.Mutex // protects the fields below
	label    string
	unit     string // "events", "files", "bytes", "objects"
	total    int64
	done     int64
	extra    string
	start    time.Time
	last     time.Time // of the last terminal redraw
	lines    int       // plain lines written
	finished bool
}

// Clock is the time source of a progress: tests drive it.
type Clock struct {
	Now  func() time.Time
	Tick <-chan time.Time // plain lines are written on each tick
	Halt func()           // stops Tick
}

// New starts a Bar on w (a terminal or not) for label, counting unit
// ("bytes" are shown human-sized) up to total (0: unknown).
func New(w io.Writer, label, unit string, total int64) *Bar {
	tty := isTerminal(w)
	c := Clock{Now: time.Now}
	if !tty {
		t := time.NewTicker(PlainEvery)
		c.Tick, c.Halt = t.C, t.Stop
	}
	return Start(w, tty, label, unit, total, c)
}

// Start starts a Bar on clock c; off a terminal, a goroutine
// writes a plain line on every tick of c until Finish.
func Start(w io.Writer, tty bool, label, unit string, total int64, c Clock) *Bar {
	p := &Bar{w: w, tty: tty, clock: c, label: label, unit: unit, total: total, start: c.Now(),
		stop: make(chan struct{}), exited: make(chan struct{})}
	if tty || c.Tick == nil {
		close(p.exited)
		return p
	}
	go func() {
		defer close(p.exited)
		for {
			select {
			case <-p.stop:
				return
			case <-c.Tick:
				p.mu.Lock()
				if !p.finished {
					p.plainLocked(false)
				}
				p.mu.Unlock()
			}
		}
	}()
	return p
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Set records progress (total 0: unchanged) and, on a terminal, redraws if
// enough time passed.
func (p *Bar) Set(done, total int64, extra string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done, p.extra = done, extra
	if total > 0 {
		p.total = total
	}
	if !p.tty || p.finished {
		return
	}
	if now := p.clock.Now(); now.Sub(p.last) >= 200*time.Millisecond {
		p.last = now
		p.drawLocked(false)
	}
}

// Finish draws the final state and ends the line (off a terminal: writes
// a last line if any was written). It may be called more than once; only
// the first call does anything. Nothing is written to w after it returns.
func (p *Bar) Finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.finished {
		p.mu.Unlock()
		return
	}
	p.finished = true
	if p.tty {
		p.drawLocked(true)
	} else if p.lines > 0 {
		p.plainLocked(true)
	}
	p.mu.Unlock()
	close(p.stop)
	if p.clock.Halt != nil {
		p.clock.Halt()
	}
	<-p.exited
}

// figuresLocked are the numbers a line shows: "40% ", "12.0 MiB/30.0
// MiB", "2.0 MiB/s", " ETA 9s" (percent and ETA only with a total).
func (p *Bar) figuresLocked(final bool) (pct, count, rate, eta string) {
	r := 0.0
	if el := p.clock.Now().Sub(p.start).Seconds(); el > 0 {
		r = float64(p.done) / el
	}
	switch {
	case p.unit == "bytes" && p.total > 0:
		count = Bytes(p.done) + "/" + Bytes(p.total)
	case p.unit == "bytes":
		count = Bytes(p.done)
	case p.total > 0:
		count = fmt.Sprintf("%d/%d %s", p.done, p.total, p.unit)
	default:
		count = fmt.Sprintf("%d %s", p.done, p.unit)
	}
	rate = fmt.Sprintf("%.0f %s/s", r, p.unit)
	if p.unit == "bytes" {
		rate = Bytes(int64(r)) + "/s"
	}
	if p.total > 0 {
		pct = fmt.Sprintf("%3.0f%% ", min(float64(p.done)/float64(p.total), 1)*100)
		if r > 0 && !final && p.done < p.total {
			eta = fmt.Sprintf(" ETA %s", (time.Duration(float64(p.total-p.done)/r) * time.Second).Round(time.Second))
		}
	}
	return pct, count, rate, eta
}

// drawLocked redraws the terminal line: a bar, the figures, extra.
func (p *Bar) drawLocked(final bool) {
	pct, count, rate, eta := p.figuresLocked(final)
	bar := ""
	if p.total > 0 {
		n := int(min(float64(p.done)/float64(p.total), 1) * 30)
		bar = "[" + strings.Repeat("#", n) + strings.Repeat(".", 30-n) + "] " + pct
	}
	line := fmt.Sprintf("\r%s %s%s, %s%s %s", p.label, bar, count, rate, eta, p.extra)
	if final {
		line += "\n"
	}
	fmt.Fprint(p.w, line+"\x1b[K")
}

// plainLocked writes one plain line: "archive: 40% 12.0 MiB/30.0 MiB,
// 2.0 MiB/s ETA 9s, 3/10 files" (the last one without ETA).
func (p *Bar) plainLocked(final bool) {
	pct, count, rate, eta := p.figuresLocked(final)
	line := fmt.Sprintf("%s: %s%s, %s%s", p.label, strings.TrimLeft(pct, " "), count, rate, eta)
	if p.extra != "" {
		line += ", " + p.extra
	}
	fmt.Fprintln(p.w, line)
	p.lines++
}

// Bytes formats n with a binary unit: "512 B", "1.5 MiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
