//go:build linux

package kernelguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Counters are the guard's totals since it was first loaded (enum counter
// in bpf/guard.bpf.c, summed over CPUs).
type Counters struct {
	DeniedOpens       uint64 // opens of unguarded stubs refused
	DeniedReadWrites  uint64 // reads or writes on an fd whose stub lost its mark
	DeniedMmaps       uint64
	DeniedTruncates   uint64
	RefusedExtentMaps uint64 // FIEMAP, FIBMAP, XFS GETBMAP*, EXT4 GET_ES_CACHE on stubs
	ProbesKilled      uint64 // SEEK_DATA/SEEK_HOLE probers killed
	ProbesLogged      uint64 // probes only logged (ProbeLog, kernel threads)
	ReleasedKilled    uint64 // readers let through by a dying fanotify group, killed
	MarkerRefused     uint64 // marker changes by non-exempt processes refused
	XattrErrors       uint64 // marker lookups that failed (the file was taken for a stub)
	ExemptAllowed     uint64 // unguarded stubs opened by exempt processes
	GuardedOpens      uint64 // stub opens let through because a mark guards them
	EventsDropped     uint64 // records lost because the ring buffer was full
}

// Status describes the guard pinned in a directory.
type Status struct {
	Loaded   bool
	PinDir   string
	Hooks    []string // programs attached, by name (sg_file_open, ...)
	Counters Counters
	Errno    uint32
	Probe    ProbeAction
	// ProtectMarker: only exempt processes may change the marker.
	ProtectMarker bool
	// ReleaseKill: readers allowed by a dying group are killed.
	ReleaseKill bool
	Exempt      []int // registered tgids (some may be gone)
}

// Status reports this guard's state.
func (g *Guard) Status() (Status, error) { return ReadStatus(g.cfg.PinDir) }

// ReadStatus reports the guard pinned in pinDir, without loading it (for
// `strata doctor`). A directory with no guard gives Loaded false and
// ErrNotLoaded.
func ReadStatus(pinDir string) (Status, error) {
	st := Status{PinDir: pinDir}
	entries, err := os.ReadDir(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return st, ErrNotLoaded
	}
	if err != nil {
		return st, fmt.Errorf("kernelguard: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "link_")
		if !ok {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(pinDir, e.Name()), nil)
		if err != nil {
			return st, fmt.Errorf("kernelguard: %w", err)
		}
		l.Close()
		st.Hooks = append(st.Hooks, name)
	}
	st.Loaded = len(st.Hooks) > 0
	if !st.Loaded {
		return st, ErrNotLoaded
	}
	counters, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, guardMapSgCounters), nil)
	if err != nil {
		return st, fmt.Errorf("kernelguard: %w", err)
	}
	defer counters.Close()
	dst := []*uint64{
		&st.Counters.DeniedOpens, &st.Counters.DeniedReadWrites, &st.Counters.DeniedMmaps,
		&st.Counters.DeniedTruncates, &st.Counters.RefusedExtentMaps, &st.Counters.ProbesKilled,
		&st.Counters.ProbesLogged, &st.Counters.ReleasedKilled, &st.Counters.MarkerRefused,
		&st.Counters.XattrErrors, &st.Counters.ExemptAllowed, &st.Counters.GuardedOpens,
		&st.Counters.EventsDropped,
	}
	for i, p := range dst {
		var perCPU []uint64
		if err := counters.Lookup(uint32(i), &perCPU); err != nil {
			return st, fmt.Errorf("kernelguard: counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			*p += v
		}
	}
	sm, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, guardMapSgSettings), nil)
	if err != nil {
		return st, fmt.Errorf("kernelguard: %w", err)
	}
	defer sm.Close()
	var s settings
	if err := sm.Lookup(uint32(0), &s); err != nil {
		return st, fmt.Errorf("kernelguard: settings: %w", err)
	}
	st.Errno, st.ProtectMarker, st.ReleaseKill = uint32(-s.NegErrno), s.ProtectMarker == 1, s.KillReleased == 1
	st.Probe = ProbeLog
	if s.ProbeKill == 1 {
		st.Probe = ProbeKill
	}
	em, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, guardMapSgExempt), nil)
	if err != nil {
		return st, fmt.Errorf("kernelguard: %w", err)
	}
	defer em.Close()
	var k uint32
	var v uint64
	for it := em.Iterate(); it.Next(&k, &v); {
		st.Exempt = append(st.Exempt, int(k))
	}
	return st, nil
}
