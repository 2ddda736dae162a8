//go:build linux

package interceptor

import (
	"testing"
	"time"
)

// TestAccessPattern: which runs of accesses look sequential (note).
func TestAccessPattern(t *testing.T) {
	const size, after = 1 << 30, 8 << 20
	type acc struct{ lo, hi int64 }
	reads := func(from, step, n int64) []acc {
		var out []acc
		for i := range n {
			out = append(out, acc{from + i*step, from + (i+1)*step})
		}
		return out
	}
	interleave := func(a, b []acc) []acc {
		var out []acc
		for i := range a {
			out = append(out, a[i], b[i])
		}
		return out
	}
	for _, c := range []struct {
		name string
		accs []acc
		want bool // sequential by the last access
	}{
		{"cat: 128 KiB reads from 0", reads(0, 128<<10, 64), true},
		{"cat: 7 MiB read in sequence is not yet", reads(0, 128<<10, 56), false},
		{"one read of 16 MiB (dd bs=16M, a mapping)", reads(0, 16<<20, 1), true},
		{"tail -c 100: last page, then the read at EOF", []acc{{size - 4096, size}, {size - 4096, size + 4096}}, false},
		{"file: 7 MiB at each end", []acc{{0, 7 << 20}, {size - 7<<20, size}}, false},
		{"repeated reads of one range", []acc{{0, 4 << 20}, {0, 4 << 20}, {0, 4 << 20}}, false},
		{"random 4 KiB reads", []acc{{40 << 20, 40<<20 + 4096}, {900 << 20, 900<<20 + 4096}, {3 << 20, 3<<20 + 4096}, {500 << 20, 500<<20 + 4096}}, false},
		{"two streams interleaved (a multi-threaded copy)", interleave(reads(0, 1<<20, 8), reads(512<<20, 1<<20, 8)), true},
		{"reads that overlap their predecessor and advance", []acc{{0, 3 << 20}, {2 << 20, 6 << 20}, {5 << 20, 9 << 20}}, true},
	} {
		var p partialState
		now := time.Now()
		got := false
		for i, a := range c.accs {
			got = p.note(a.lo, a.hi, size, after, now.Add(time.Duration(i)*time.Millisecond))
		}
		if got != c.want {
			t.Errorf("%s: sequential %v, want %v", c.name, got, c.want)
		}
	}
	var p partialState
	if p.note(0, 64<<20, size, -1, time.Now()) {
		t.Error("SequentialAfter negative: a 64 MiB read was taken for sequential")
	}
}
