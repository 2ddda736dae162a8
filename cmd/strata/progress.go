package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/projections/catalog"
)

// progress draws a one-line progress bar (done/total, rate, ETA) on a
// terminal, at most a few times a second. On anything that is not a
// terminal it draws nothing.
type progress struct {
	mu      sync.Mutex
	w       io.Writer
	label   string
	unit    string // "events", "files", "bytes"
	total   int64
	done    int64
	extra   string
	start   time.Time
	last    time.Time
	enabled bool
}

func newProgress(w io.Writer, label, unit string, total int64) *progress {
	return &progress{w: w, label: label, unit: unit, total: total, start: time.Now(), enabled: isTerminal(w)}
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

// Set records progress and redraws if enough time passed.
func (p *progress) Set(done, total int64, extra string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done, p.extra = done, extra
	if total > 0 {
		p.total = total
	}
	if now := time.Now(); now.Sub(p.last) >= 200*time.Millisecond {
		p.last = now
		p.drawLocked(false)
	}
}

// Finish draws the final state and ends the line.
func (p *progress) Finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drawLocked(true)
}

func (p *progress) drawLocked(final bool) {
	if !p.enabled {
		return
	}
	el := time.Since(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(p.done) / el
	}
	bar, eta := "", ""
	if p.total > 0 {
		frac := min(float64(p.done)/float64(p.total), 1)
		n := int(frac * 30)
		bar = fmt.Sprintf("[%s%s] %3.0f%% ", strings.Repeat("#", n), strings.Repeat(".", 30-n), frac*100)
		if rate > 0 && !final {
			eta = fmt.Sprintf(" ETA %s", (time.Duration(float64(p.total-p.done)/rate) * time.Second).Round(time.Second))
		}
	}
	count := fmt.Sprintf("%d/%d %s", p.done, p.total, p.unit)
	rs := fmt.Sprintf("%.0f %s/s", rate, p.unit)
	if p.unit == "bytes" {
		count = humanBytes(p.done) + "/" + humanBytes(p.total)
		rs = humanBytes(int64(rate)) + "/s"
	}
	line := fmt.Sprintf("\r%s %s%s, %s%s %s", p.label, bar, count, rs, eta, p.extra)
	if final {
		line += "\n"
	}
	fmt.Fprint(p.w, line+"\x1b[K")
}

// catalogProgress adapts p to catalog.Progress.
func (p *progress) catalogProgress() catalog.Progress {
	if p == nil {
		return nil
	}
	return func(done, total uint64) { p.Set(int64(done), int64(total), "") }
}
