package recall

import (
	"container/list"
	"sync"

	"github.com/strata-hsm/strata/workers/object"
)

// lru is a bounded map of manifests, least recently used out first. It is
// safe for concurrent use.
type lru struct {
	max int
	mu  struct {
		sync.Mutex
		order *list.List               // of *lruEntry, most recent first. Protected by mu.
		byKey map[string]*list.Element // Protected by mu.
	}
}

type lruEntry struct {
	key string
	m   object.Manifest
}

func newLRU(max int) *lru {
	c := &lru{max: max}
	c.mu.order = list.New()
	c.mu.byKey = make(map[string]*list.Element)
	return c
}

func (c *lru) get(key string) (object.Manifest, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.mu.byKey[key]
	if !ok {
		return object.Manifest{}, false
	}
	c.mu.order.MoveToFront(e)
	return e.Value.(*lruEntry).m, true
}

func (c *lru) put(key string, m object.Manifest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.mu.byKey[key]; ok {
		e.Value.(*lruEntry).m = m
		c.mu.order.MoveToFront(e)
		return
	}
	c.mu.byKey[key] = c.mu.order.PushFront(&lruEntry{key, m})
	for c.mu.order.Len() > c.max {
		old := c.mu.order.Back()
		c.mu.order.Remove(old)
		delete(c.mu.byKey, old.Value.(*lruEntry).key)
	}
}

func (c *lru) remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.mu.byKey[key]; ok {
		c.mu.order.Remove(e)
		delete(c.mu.byKey, key)
	}
}

func (c *lru) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.order.Len()
}
