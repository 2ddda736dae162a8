package recall

import (
	"fmt"
	"testing"

	"github.com/strata-hsm/strata/workers/object"
)

func TestLRU(t *testing.T) {
	c := newLRU(3)
	for i := range 3 {
		c.put(fmt.Sprint(i), object.Manifest{Size: int64(i)})
	}
	if _, ok := c.get("0"); !ok { // 0 is now the most recent
		t.Fatal("0 missing")
	}
	c.put("3", object.Manifest{Size: 3}) // evicts 1, the least recent
	if _, ok := c.get("1"); ok {
		t.Fatal("1 not evicted")
	}
	for _, k := range []string{"0", "2", "3"} {
		if m, ok := c.get(k); !ok || fmt.Sprint(m.Size) != k {
			t.Fatalf("%s: %v %v", k, m.Size, ok)
		}
	}
	c.put("3", object.Manifest{Size: 33})
	if m, _ := c.get("3"); m.Size != 33 || c.len() != 3 {
		t.Fatalf("update: size %d, len %d", m.Size, c.len())
	}
	c.remove("3")
	c.remove("nope")
	if _, ok := c.get("3"); ok || c.len() != 2 {
		t.Fatalf("remove: len %d", c.len())
	}
}
