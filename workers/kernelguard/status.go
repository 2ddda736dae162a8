//go:build linux

package kernelguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Counters are the guard's totals since its maps were created (enum counter
// in bpf/guard.bpf.c, summed over CPUs).
type Counters struct {
	ProbesKilled   uint64 // probers sent SIGKILL
	ProbesLogged   uint64 // probes only recorded (ActionLog)
	Exempt         uint64 // probes of stubs by exempt processes (the daemon)
	Stale          uint64 // probes of a file reusing a registered stub's inode number (not killed)
	KernelThreads  uint64 // probes by kernel threads (nfsd, ksmbd), which cannot be killed
	SignalFailed   uint64 // bpf_send_signal refused (an exiting process)
	RecordsDropped uint64 // records lost because nobody read the ring buffer
}

// Status describes the guard pinned in a directory.
type Status struct {
	Loaded   bool // the program is attached (its link is pinned)
	PinDir   string
	Action   Action
	Stubs    int // registered stubs (counted by walking the table: ~1 s per million)
	MaxStubs int // capacity of the stub table
	Exempt   []int
	Counters Counters
}

// Status reports this guard's state.
func (g *Guard) Status() (Status, error) { return ReadStatus(g.cfg.PinDir) }

// ReadStatus reports the guard pinned in pinDir without loading it (for
// `strata doctor`). A directory without the guard's link gives Loaded false
// and an error wrapping ErrNotLoaded.
func ReadStatus(pinDir string) (Status, error) {
	st := Status{PinDir: pinDir}
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, linkPin), nil)
	if errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("%w: %s", ErrNotLoaded, pinDir)
	}
	if err != nil {
		return st, fmt.Errorf("kernelguard: %w", err)
	}
	l.Close()
	st.Loaded = true
	pinned := func(name string) (*ebpf.Map, error) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if err != nil {
			return nil, fmt.Errorf("kernelguard: %w", err)
		}
		return m, nil
	}

	counters, err := pinned(guardMapSgCounters)
	if err != nil {
		return st, err
	}
	defer counters.Close()
	dst := []*uint64{
		&st.Counters.ProbesKilled, &st.Counters.ProbesLogged, &st.Counters.Exempt,
		&st.Counters.Stale, &st.Counters.KernelThreads, &st.Counters.SignalFailed,
		&st.Counters.RecordsDropped,
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

	sm, err := pinned(guardMapSgSettings)
	if err != nil {
		return st, err
	}
	defer sm.Close()
	var s settings
	if err := sm.Lookup(uint32(0), &s); err != nil {
		return st, fmt.Errorf("kernelguard: settings: %w", err)
	}
	st.Action = ActionLog
	if s.Kill == 1 {
		st.Action = ActionKill
	}

	stubs, err := pinned(guardMapSgStubs)
	if err != nil {
		return st, err
	}
	defer stubs.Close()
	st.MaxStubs = int(stubs.MaxEntries())
	var k stubKey
	var v stubValue
	it := stubs.Iterate()
	for it.Next(&k, &v) {
		st.Stubs++
	}
	if err := it.Err(); err != nil {
		return st, fmt.Errorf("kernelguard: count stubs: %w", err)
	}

	em, err := pinned(guardMapSgExempt)
	if err != nil {
		return st, err
	}
	defer em.Close()
	var pid uint32
	var start uint64
	for it := em.Iterate(); it.Next(&pid, &start); {
		st.Exempt = append(st.Exempt, int(pid))
	}
	return st, nil
}
