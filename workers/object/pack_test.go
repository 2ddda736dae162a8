package object

import (
	"bytes"
	"context"
	"fmt"
	"testing"
)

// TestNumbersCompress: a column of numbers has no long matches in a small
// sample but low byte entropy; it must not be mistaken for incompressible
// data and stored raw (regression: it was, at 1.0 of its size).
func TestNumbersCompress(t *testing.T) {
	var b bytes.Buffer
	for i := 1; i <= 300000; i++ {
		fmt.Fprintf(&b, "%d\n", i)
	}
	var out bytes.Buffer
	m, err := Pack(context.Background(), bytes.NewReader(b.Bytes()), &out, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m.PackedSize*5 > m.Size {
		t.Fatalf("%d bytes of numbers packed to %d: stored raw?", m.Size, m.PackedSize)
	}
}
