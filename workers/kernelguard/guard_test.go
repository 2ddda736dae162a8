//go:build linux

package kernelguard

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestObject checks the committed BPF object against the Go side: the one
// program has the type and tracepoint the loader attaches, every map its
// type and by-name pinning, and the structs shared with guard.bpf.c have
// the same layout on both sides (guard.bpf.c asserts the same sizes).
func TestObject(t *testing.T) {
	spec, err := loadGuard()
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Programs) != 1 {
		t.Errorf("%d programs in the object, want 1", len(spec.Programs))
	}
	p := spec.Programs[guardProgSgProbe]
	if p == nil || p.Type != ebpf.Tracing || p.AttachType != ebpf.AttachTraceRawTp || p.AttachTo != "iomap_iter_dstmap" || p.License != "GPL" {
		t.Errorf("program %s: %+v; want tracing, tp_btf/iomap_iter_dstmap, GPL", guardProgSgProbe, p)
	}
	wantMaps := map[string]ebpf.MapType{
		guardMapSgStubs: ebpf.Hash, guardMapSgExempt: ebpf.Hash, guardMapSgSettings: ebpf.Array,
		guardMapSgCounters: ebpf.PerCPUArray, guardMapSgRecords: ebpf.RingBuf,
	}
	if len(spec.Maps) != len(wantMaps) || len(pinNames()) != len(wantMaps)+1 {
		t.Errorf("%d maps in the object, %d pin names; want %d and %d", len(spec.Maps), len(pinNames()), len(wantMaps), len(wantMaps)+1)
	}
	for name, typ := range wantMaps {
		m := spec.Maps[name]
		if m == nil || m.Type != typ || m.Pinning != ebpf.PinByName {
			t.Errorf("map %s: %+v; want type %v pinned by name", name, m, typ)
		}
	}
	if m := spec.Maps[guardMapSgStubs]; m.Flags&1 == 0 { // BPF_F_NO_PREALLOC
		t.Errorf("stub table is preallocated (flags %#x): it would take its whole capacity at once", m.Flags)
	}
	for _, c := range []struct {
		name string
		got  int
		want int
	}{
		{"rawRecord", binary.Size(rawRecord{}), 88},
		{"settings", binary.Size(settings{}), 8},
		{"stubKey", binary.Size(stubKey{}), 16},
		{"stubValue", binary.Size(stubValue{}), 8},
		{"Counters fields", reflect.TypeFor[Counters]().NumField(), 7},
		{"stub key in the object", int(spec.Maps[guardMapSgStubs].KeySize), 16},
		{"stub value in the object", int(spec.Maps[guardMapSgStubs].ValueSize), 8},
		{"settings in the object", int(spec.Maps[guardMapSgSettings].ValueSize), 8},
		{"counters in the object", int(spec.Maps[guardMapSgCounters].MaxEntries), 7},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestConfig(t *testing.T) {
	var c Config
	c.EnsureDefaults()
	if c.PinDir != DefaultPinDir || c.Action != ActionKill || c.MaxStubs != DefaultMaxStubs {
		t.Fatalf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if s := c.settings(); s.Kill != 1 {
		t.Errorf("default settings %+v, want kill", s)
	}
	if s := (Config{Action: ActionLog}).settings(); s.Kill != 0 {
		t.Errorf("log settings %+v", s)
	}
	for _, bad := range []Config{
		{PinDir: "relative", Action: ActionKill, MaxStubs: 1},
		{PinDir: "/sys/fs/bpf/x/../y", Action: ActionKill, MaxStubs: 1},
		{PinDir: "/sys/fs/bpf/x", Action: "ignore", MaxStubs: 1},
		{PinDir: "/sys/fs/bpf/x", Action: ActionKill, MaxStubs: -1},
		{PinDir: "/sys/fs/bpf/x", Action: ActionKill, MaxStubs: maxMaxStubs + 1},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrBadConfig", bad, err)
		}
	}
}

// TestSupported: this project's machines (Linux 6.18, no BPF trampolines)
// run the guard, so Supported must say nil there; a skip (a failure under
// STRATA_REQUIRE_ALL=1) names the reason elsewhere.
func TestSupported(t *testing.T) {
	stratatest.NeedRoot(t)
	if err := Supported(); err != nil {
		known := false
		for _, s := range []error{ErrNotRoot, ErrNoBTF, ErrNoTracepoint, ErrNoProgType, ErrNoBPFFS} {
			known = known || errors.Is(err, s)
		}
		if !known {
			t.Fatalf("Supported() = %v: not one of the documented reasons", err)
		}
		stratatest.Skip(t, "the guard cannot run here: %v", err)
	}
}
