package tier

import "sync"

// Draining is the set of tiers being drained (strata tier drain): their
// copies no longer count towards release.copies, so that no file comes to
// depend on a tier on its way out. Safe for concurrent use; the zero value
// is empty, and a nil *Draining holds nothing.
type Draining struct {
	mu sync.RWMutex
	m  map[string]bool
}

// Add marks name as being drained.
func (d *Draining) Add(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string]bool{}
	}
	d.m[name] = true
}

// Has reports whether name is being drained.
func (d *Draining) Has(name string) bool {
	if d == nil {
		return false
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.m[name]
}
