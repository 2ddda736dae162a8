//go:build linux

package interceptor

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

func rawEvent(vers uint8, mask uint64, fd, pid int32, rng *[2]uint64) []byte {
	n := metadataLen
	if rng != nil {
		n += rangeInfoLen
	}
	b := make([]byte, n)
	le := binary.NativeEndian
	le.PutUint32(b[0:], uint32(n))
	b[4] = vers
	le.PutUint16(b[6:], metadataLen)
	le.PutUint64(b[8:], mask)
	le.PutUint32(b[16:], uint32(fd))
	le.PutUint32(b[20:], uint32(pid))
	if rng != nil {
		r := b[metadataLen:]
		r[0] = unix.FAN_EVENT_INFO_TYPE_RANGE
		le.PutUint16(r[2:], rangeInfoLen)
		le.PutUint64(r[8:], rng[0])
		le.PutUint64(r[16:], rng[1])
	}
	return b
}

func TestParseEvents(t *testing.T) {
	buf := append(rawEvent(3, unix.FAN_PRE_ACCESS, 7, 100, &[2]uint64{98304, 8192}),
		rawEvent(3, unix.FAN_OPEN_PERM, 8, 101, nil)...)
	buf = append(buf, rawEvent(2, unix.FAN_PRE_ACCESS, 9, 102, nil)...)
	var got []event
	var bads []error
	if err := parseEvents(buf, func(ev event, bad error) { got = append(got, ev); bads = append(bads, bad) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d events, want 3", len(got))
	}
	if e := got[0]; e.fd != 7 || e.pid != 100 || !e.hasRange || e.off != 98304 || e.count != 8192 || bads[0] != nil {
		t.Errorf("event 0: %+v %v", e, bads[0])
	}
	if e := got[1]; e.fd != 8 || e.hasRange || e.mask != unix.FAN_OPEN_PERM || bads[1] != nil {
		t.Errorf("event 1: %+v %v", e, bads[1])
	}
	if e := got[2]; e.fd != 9 || bads[2] == nil {
		t.Errorf("event 2 with metadata version 2: %+v, error %v; want its fd and an error", e, bads[2])
	}

	// Truncated and inconsistent buffers are errors, never a panic.
	for _, b := range [][]byte{buf[:10], buf[:30], func() []byte {
		x := rawEvent(3, unix.FAN_PRE_ACCESS, 7, 1, &[2]uint64{0, 1})
		binary.NativeEndian.PutUint16(x[metadataLen+2:], 200)
		return x
	}()} {
		_ = parseEvents(b, func(event, error) {})
	}
	bad := rawEvent(3, unix.FAN_PRE_ACCESS, 7, 1, nil)
	binary.NativeEndian.PutUint32(bad[0:], 1000)
	if err := parseEvents(bad, func(event, error) {}); err == nil {
		t.Error("event length past the buffer: no error")
	}
}

func FuzzParseEvents(f *testing.F) {
	f.Add(rawEvent(3, unix.FAN_PRE_ACCESS, 7, 100, &[2]uint64{4096, 4096}))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = parseEvents(b, func(event, error) {})
	})
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{Mode: "fast"}, {ChunkSize: 1000}, {ChunkSize: -4096}, {BackgroundFills: -1}, {StopTimeout: -1},
	} {
		c.EnsureDefaults()
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	c := NewConfig()
	if err := c.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestParseRelease(t *testing.T) {
	for rel, want := range map[string][2]int{"6.18.44-fc-v657": {6, 18}, "6.14.0": {6, 14}, "5.15.0-91-generic": {5, 15}} {
		ma, mi, ok := parseRelease(rel)
		if !ok || ma != want[0] || mi != want[1] {
			t.Errorf("%s: %d.%d %v", rel, ma, mi, ok)
		}
	}
	if _, _, ok := parseRelease("garbage"); ok {
		t.Error("garbage parsed")
	}
}
