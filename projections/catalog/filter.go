package catalog

import (
	"fmt"
	"hash/maphash"

	"github.com/cockroachdb/pebble/v2"
)

// keyFilter is an in-memory Bloom filter of the keys Apply may look up
// (files, paths, objects, copies, pins). In a replay most lookups are for
// keys that do not exist yet (a new file, object or copy), and a Pebble Get
// that misses still searches the memtable and every level: the filter
// answers most of those without touching Pebble. It is never persisted: the
// first Apply builds it from the database, and it is rebuilt, twice as big,
// when it holds more keys than it was sized for. About 1.2 bytes per key.
type keyFilter struct {
	bits []uint64
	m    uint64 // number of bits
	n    int    // keys added
	cap  int    // keys it was sized for (~1 % false positives up to there)
	seed maphash.Seed
}

// filteredPrefixes are the key prefixes Apply reads.
var filteredPrefixes = []string{pfxFile, pfxPath, pfxObject, pfxCopy, pfxPin, pfxVersion}

const filterHashes = 7

// minFilterKeys is the smallest capacity (1.25 MB): rebuilding scans the
// whole database, so start big enough that a small catalog never does.
const minFilterKeys = 1 << 20

func newKeyFilter(capacity int, seed maphash.Seed) *keyFilter {
	m := (uint64(capacity)*10 + 63) &^ 63
	return &keyFilter{bits: make([]uint64, m/64), m: m, cap: capacity, seed: seed}
}

func (f *keyFilter) add(key string) { f.addHash(maphash.String(f.seed, key)) }

func (f *keyFilter) addHash(h uint64) {
	h1, h2 := h, h>>33|1
	for i := uint64(0); i < filterHashes; i++ {
		b := (h1 + i*h2) % f.m
		f.bits[b/64] |= 1 << (b % 64)
	}
	f.n++
}

func (f *keyFilter) mayContain(key string) bool {
	h := maphash.String(f.seed, key)
	h1, h2 := h, h>>33|1
	for i := uint64(0); i < filterHashes; i++ {
		b := (h1 + i*h2) % f.m
		if f.bits[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

// full reports whether the filter holds more keys than it was sized for.
func (f *keyFilter) full() bool { return f.n > f.cap }

// buildFilter returns a filter of every filtered key in db, sized for at
// least twice as many (and at least atLeast).
func buildFilter(db *pebble.DB, atLeast int) (*keyFilter, error) {
	if atLeast < 1 {
		atLeast = 1
	}
	seed := maphash.MakeSeed()
	var hashes []uint64
	for _, pfx := range filteredPrefixes {
		err := scan(db, pfx, func(k, _ []byte) error {
			hashes = append(hashes, maphash.Bytes(seed, k))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("catalog: build key filter: %w", err)
		}
	}
	f := newKeyFilter(max(2*len(hashes), atLeast), seed)
	for _, h := range hashes {
		f.addHash(h)
	}
	return f, nil
}
