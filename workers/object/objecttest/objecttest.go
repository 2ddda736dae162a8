// Package objecttest makes deterministic test data for object and its
// users: random bytes (incompressible) and text-like bytes (compressing
// about like prose or logs), from a seed.
//
// Only tests and benchmarks import this package.
package objecttest

import (
	"io"
	"math/rand/v2"
	"strconv"
)

// Random returns n pseudo-random bytes from seed.
func Random(n int, seed uint64) []byte {
	b := make([]byte, n)
	fillRandom(b, seed)
	return b
}

func fillRandom(b []byte, seed uint64) {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	_, _ = rand.NewChaCha8(key).Read(b)
}

var words = []string{
	"the", "of", "and", "archive", "tape", "object", "frame", "stub", "recall",
	"storage", "hierarchical", "manager", "kernel", "inode", "release", "copy",
	"verify", "checksum", "a", "to", "in", "is", "that", "for", "it", "with",
	"as", "was", "on", "file", "files", "directory", "tier", "cold", "hot",
	"level", "policy", "scanner", "event", "stream", "seek", "table", "bytes",
	"INFO", "WARN", "ERROR", "request", "completed", "failed", "user", "host",
}

// Text returns n bytes of text-like data from seed: log-ish lines of common
// words and numbers.
func Text(n int, seed uint64) []byte {
	b := make([]byte, 0, n+64)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	line := 0
	for len(b) < n {
		line++
		b = append(b, "2026-01-"...)
		b = strconv.AppendInt(b, int64(1+r.IntN(28)), 10)
		b = append(b, ' ')
		b = append(b, words[43+r.IntN(3)]...)
		b = append(b, " seq="...)
		b = strconv.AppendInt(b, int64(line), 10)
		for range 4 + r.IntN(12) {
			b = append(b, ' ')
			b = append(b, words[r.IntN(len(words))]...)
		}
		b = append(b, " id="...)
		b = strconv.AppendUint(b, r.Uint64()%100000, 16)
		b = append(b, '\n')
	}
	return b[:n]
}

// Mixed returns n bytes: the first half random, the second half text.
func Mixed(n int, seed uint64) []byte {
	b := Random(n/2, seed)
	return append(b, Text(n-n/2, seed+1)...)
}

// Reader returns a reader of n bytes that alternates chunks of random and
// text data (each chunk bytes long), generated as it is read, so large
// inputs need no memory.
func Reader(n int64, chunk int, seed uint64) io.Reader {
	return &genReader{left: n, chunk: chunk, seed: seed}
}

type genReader struct {
	left  int64
	chunk int
	seed  uint64
	buf   []byte
	i     int
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	if len(g.buf) == 0 {
		if g.i%2 == 0 {
			g.buf = Random(g.chunk, g.seed+uint64(g.i))
		} else {
			g.buf = Text(g.chunk, g.seed+uint64(g.i))
		}
		g.i++
	}
	n := copy(p, g.buf[:min(int64(len(g.buf)), g.left)])
	g.buf = g.buf[n:]
	g.left -= int64(n)
	return n, nil
}
