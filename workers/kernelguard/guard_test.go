//go:build linux

package kernelguard

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestObject checks the committed BPF object against the Go side: every
// program has the type and hook the loader expects, every map its type and
// by-name pinning, and the structs and enums shared with guard.bpf.c have
// the same layout on both sides.
func TestObject(t *testing.T) {
	spec, err := loadGuard()
	if err != nil {
		t.Fatal(err)
	}
	wantProgs := map[string]struct {
		typ      ebpf.ProgramType
		attach   ebpf.AttachType
		to       string
		sleepabl bool
	}{
		guardProgSgFileOpen:             {ebpf.LSM, ebpf.AttachLSMMac, "file_open", true},
		guardProgSgFilePermission:       {ebpf.LSM, ebpf.AttachLSMMac, "file_permission", false},
		guardProgSgMmapFile:             {ebpf.LSM, ebpf.AttachLSMMac, "mmap_file", false},
		guardProgSgPathTruncate:         {ebpf.LSM, ebpf.AttachLSMMac, "path_truncate", false},
		guardProgSgFileIoctl:            {ebpf.LSM, ebpf.AttachLSMMac, "file_ioctl", true},
		guardProgSgFileIoctlCompat:      {ebpf.LSM, ebpf.AttachLSMMac, "file_ioctl_compat", false},
		guardProgSgInodeSetxattr:        {ebpf.LSM, ebpf.AttachLSMMac, "inode_setxattr", false},
		guardProgSgInodeRemovexattr:     {ebpf.LSM, ebpf.AttachLSMMac, "inode_removexattr", false},
		guardProgSgInodePostSetxattr:    {ebpf.LSM, ebpf.AttachLSMMac, "inode_post_setxattr", false},
		guardProgSgInodePostRemovexattr: {ebpf.LSM, ebpf.AttachLSMMac, "inode_post_removexattr", false},
		guardProgSgLlseek:               {ebpf.Tracing, ebpf.AttachTraceFEntry, "vfs_llseek", false},
		guardProgSgFanotifyReleased:     {ebpf.Tracing, ebpf.AttachTraceFExit, "fanotify_handle_event", false},
	}
	if len(spec.Programs) != len(wantProgs) || len(hooks) != len(wantProgs) {
		t.Errorf("%d programs in the object, %d hooks in guard.go, want %d", len(spec.Programs), len(hooks), len(wantProgs))
	}
	for name, w := range wantProgs {
		p := spec.Programs[name]
		if p == nil {
			t.Errorf("program %s missing", name)
			continue
		}
		sleepable := p.Flags&(1<<4) != 0 // BPF_F_SLEEPABLE
		if p.Type != w.typ || p.AttachType != w.attach || p.AttachTo != w.to || sleepable != w.sleepabl {
			t.Errorf("program %s: %v/%v %q sleepable=%v; want %v/%v %q sleepable=%v", name, p.Type, p.AttachType, p.AttachTo, sleepable, w.typ, w.attach, w.to, w.sleepabl)
		}
		if p.License != "GPL" {
			t.Errorf("program %s: license %q", name, p.License)
		}
	}
	wantMaps := map[string]ebpf.MapType{
		guardMapSgVerdicts: ebpf.InodeStorage, guardMapSgStubs: ebpf.LRUHash, guardMapSgExempt: ebpf.Hash,
		guardMapSgSettings: ebpf.Array, guardMapSgCounters: ebpf.PerCPUArray, guardMapSgRecords: ebpf.RingBuf,
	}
	for name, typ := range wantMaps {
		m := spec.Maps[name]
		if m == nil || m.Type != typ || m.Pinning != ebpf.PinByName {
			t.Errorf("map %s: %+v; want type %v pinned by name", name, m, typ)
		}
	}

	// bpf/guard.bpf.c asserts the same numbers with _Static_assert.
	if got := binary.Size(rawRecord{}); got != 56 {
		t.Errorf("rawRecord is %d bytes, struct record 56", got)
	}
	if got := binary.Size(settings{}); got != 16 {
		t.Errorf("settings is %d bytes, struct settings 16", got)
	}
	if got := reflect.TypeFor[Counters]().NumField(); got != 13 {
		t.Errorf("Counters has %d fields, C_MAX is 13", got)
	}
	if MarkerRefused != 8 || HoleProbe != 6 {
		t.Errorf("Kind values drifted from enum kind: MarkerRefused=%d HoleProbe=%d", MarkerRefused, HoleProbe)
	}
}

func TestConfig(t *testing.T) {
	var c Config
	c.EnsureDefaults()
	if c.PinDir != DefaultPinDir || c.Errno != syscall.EIO || c.ProbeAction != ProbeKill {
		t.Fatalf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	s := c.settings()
	if s != (settings{NegErrno: -5, ProbeKill: 1, ProtectMarker: 1, KillReleased: 1}) {
		t.Errorf("default settings %+v", s)
	}
	for _, bad := range []Config{
		{PinDir: "relative", Errno: syscall.EIO, ProbeAction: ProbeKill},
		{PinDir: "/sys/fs/bpf/x", Errno: syscall.ENOENT, ProbeAction: ProbeKill},
		{PinDir: "/sys/fs/bpf/x", Errno: syscall.EIO, ProbeAction: "ignore"},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrBadConfig", bad, err)
		}
	}
}

// TestSupported checks that Supported explains itself with one of the
// sentinels, and that Load, on a kernel that cannot run the guard, fails
// the same way and pins nothing. On this project's CI machines it reports
// ErrNoTramp (see README.md).
func TestSupported(t *testing.T) {
	stratatest.NeedRoot(t)
	err := Supported()
	t.Logf("Supported() = %v", err)
	if err == nil {
		return // the live tests (-tags kernelguard_live) cover this kernel
	}
	known := false
	for _, s := range []error{ErrNotRoot, ErrNoBPFLSM, ErrNoBTF, ErrNoKfunc, ErrNoBPFFS, ErrNoTramp} {
		known = known || errors.Is(err, s)
	}
	if !known {
		t.Fatalf("Supported() = %v: not one of the documented reasons", err)
	}
	dir := filepath.Join("/sys/fs/bpf", "strata-test-"+randomSuffix(t))
	t.Cleanup(func() { Remove(dir) })
	g, lerr := Load(Config{PinDir: dir})
	if lerr == nil {
		g.Close()
		t.Fatalf("Load succeeded where Supported said %v", err)
	}
	if lerr.Error() != err.Error() {
		t.Errorf("Load = %v; Supported = %v", lerr, err)
	}
	if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("Load left %s behind (%v)", dir, serr)
	}
	if _, serr := ReadStatus(dir); !errors.Is(serr, ErrNotLoaded) {
		t.Errorf("ReadStatus of nothing = %v, want ErrNotLoaded", serr)
	}
}
