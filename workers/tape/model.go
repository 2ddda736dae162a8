package tape

import (
	"fmt"
	"math"
	"time"
)

// Model is the timing model of an emulated drive. All times are virtual:
// the Emulator advances its clock by them and never sleeps.
//
// Writing: the drive accepts records into a Buffer and writes them to the
// medium at Rate. It matches its speed to the host down to MinRate: it
// only stops (an underrun, costing a Backhitch) when, over the last Buffer
// bytes it received, data arrived slower than MinRate and the buffer ran
// dry. A host faster than Rate is blocked while the buffer is full. A
// flushing filemark writes the buffer out, then stops the drive
// (FlushTime). Moving the tape (rewind, locate, space) flushes first.
//
// Positioning follows a serpentine layout (as LTFS's filedebug backend
// models it): the capacity is laid out over Wraps wraps, alternately
// forward and backward over the length of the tape; moving the full length
// takes EndToEnd, changing direction DirectionChange, and every locate
// that is not a short move forward in the current wrap costs
// LocateOverhead.
type Model struct {
	Rate            float64       // native (highest) speed, bytes/s
	MinRate         float64       // lowest matched speed, bytes/s
	Buffer          int64         // drive data buffer, bytes
	Backhitch       time.Duration // stop, reverse, restart after an underrun
	FlushTime       time.Duration // a flushing filemark, after the buffer is written
	Wraps           int
	EndToEnd        time.Duration
	DirectionChange time.Duration
	LocateOverhead  time.Duration
	LoadTime        time.Duration // thread and position at BOT
	UnloadTime      time.Duration
	RewindTime      time.Duration // fixed part of a rewind (plus travel)
}

// LTO9 is an LTO-9-like drive: 400 MB/s native, speed matching down to
// 177 MB/s, a 1 GiB buffer, and LTFS filedebug's seek figures (40 wraps,
// 12 s end to end, 2 s direction change).
func LTO9() Model {
	return Model{
		Rate: 400e6, MinRate: 177e6, Buffer: 1 << 30,
		Backhitch: 3 * time.Second, FlushTime: 2 * time.Second,
		Wraps: 40, EndToEnd: 12 * time.Second, DirectionChange: 2 * time.Second,
		LocateOverhead: 500 * time.Millisecond,
		LoadTime:       15 * time.Second, UnloadTime: 17 * time.Second, RewindTime: 2 * time.Second,
	}
}

// Validate checks the model.
func (m Model) Validate() error {
	switch {
	case !(m.Rate > 0):
		return fmt.Errorf("tape model: rate %v must be > 0", m.Rate)
	case !(m.MinRate > 0) || m.MinRate > m.Rate:
		return fmt.Errorf("tape model: min rate %v must be in (0, rate]", m.MinRate)
	case m.Buffer <= 0:
		return fmt.Errorf("tape model: buffer %d must be > 0", m.Buffer)
	case m.Wraps <= 0:
		return fmt.Errorf("tape model: wraps %d must be > 0", m.Wraps)
	case m.Backhitch < 0 || m.FlushTime < 0 || m.EndToEnd < 0 || m.DirectionChange < 0 ||
		m.LocateOverhead < 0 || m.LoadTime < 0 || m.UnloadTime < 0 || m.RewindTime < 0:
		return fmt.Errorf("tape model: negative duration")
	}
	return nil
}

func (m Model) xfer(n int64) time.Duration {
	return time.Duration(float64(n) / m.Rate * float64(time.Second))
}

// phys maps a byte offset on a cartridge of the given capacity to (wrap,
// longitudinal position in [0,1]).
func (m Model) phys(off, capacity int64) (int, float64) {
	if capacity <= 0 {
		return 0, 0
	}
	wf := float64(off) / float64(capacity) * float64(m.Wraps)
	w := int(wf)
	if w >= m.Wraps {
		w = m.Wraps - 1
	}
	x := wf - float64(w)
	if x > 1 {
		x = 1
	}
	if w%2 == 1 {
		return w, 1 - x
	}
	return w, x
}

// locate is the time to move the head from byte offset from to byte
// offset to.
func (m Model) locate(from, to, capacity int64) time.Duration {
	if from == to {
		return 0
	}
	w1, l1 := m.phys(from, capacity)
	w2, l2 := m.phys(to, capacity)
	travel := time.Duration(math.Abs(l2-l1) * float64(m.EndToEnd))
	if w1 == w2 && to > from {
		// Forward in the same wrap: the drive spaces over the data.
		return travel
	}
	cost := m.LocateOverhead + travel
	if w1%2 != w2%2 || to < from {
		cost += m.DirectionChange
	}
	return cost
}
