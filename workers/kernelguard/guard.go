//go:build linux

package kernelguard

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// linkPin is the pin of the guard's one link; the maps are pinned under
// their own names (sg_*).
const linkPin = "link_" + guardProgSgProbe

// pinNames are every pin a guard directory may hold, the link first:
// Remove deletes only these, so it cannot empty a directory that is not a
// guard's.
func pinNames() []string {
	return []string{
		linkPin,
		guardMapSgStubs, guardMapSgExempt, guardMapSgSettings, guardMapSgCounters, guardMapSgRecords,
	}
}

// Guard is a loaded guard. Closing it keeps the guard in the kernel (pins);
// Remove takes it out.
//
// The methods may be called from several goroutines.
type Guard struct {
	cfg  Config
	coll *ebpf.Collection
	link link.Link
}

// Load loads the guard and pins it under cfg.PinDir, or takes over the one
// already pinned there: the maps (stub table, exemptions, counters, records)
// are reused by name, so stubs added by an earlier daemon stay guarded; a
// pinned program that is unchanged stays attached; a changed one is
// replaced by attaching the new program before the old link is unpinned, so
// the guard never lapses. The settings (Config.Action) are written each
// time. Load mounts bpffs on /sys/fs/bpf if it is not mounted. Load is
// idempotent: call it at every daemon start.
func Load(cfg Config) (*Guard, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := Supported(); err != nil {
		return nil, err
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	_, statErr := os.Stat(cfg.PinDir)
	fresh := errors.Is(statErr, os.ErrNotExist)
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("kernelguard: %w", err)
	}
	g, err := load(cfg)
	if err != nil && fresh {
		Remove(cfg.PinDir) // leave nothing behind a failed first load
	}
	return g, err
}

func load(cfg Config) (*Guard, error) {
	spec, err := loadGuard()
	if err != nil {
		return nil, fmt.Errorf("kernelguard: %w", err)
	}
	stubs := spec.Maps[guardMapSgStubs]
	stubs.MaxEntries = uint32(cfg.MaxStubs)
	if m, err := ebpf.LoadPinnedMap(filepath.Join(cfg.PinDir, guardMapSgStubs), nil); err == nil {
		stubs.MaxEntries = m.MaxEntries() // a pinned table keeps its capacity
		m.Close()
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}})
	if err != nil {
		return nil, fmt.Errorf("kernelguard: load: %w", err)
	}
	g := &Guard{cfg: cfg, coll: coll}
	if err := coll.Maps[guardMapSgSettings].Put(uint32(0), cfg.settings()); err != nil {
		g.Close()
		return nil, fmt.Errorf("kernelguard: write settings: %w", err)
	}
	if g.link, err = attachPinned(cfg.PinDir, coll.Programs[guardProgSgProbe]); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// attachPinned returns the pinned link, replacing it when its program
// differs from p (instructions or maps).
func attachPinned(dir string, p *ebpf.Program) (link.Link, error) {
	pin := filepath.Join(dir, linkPin)
	old, err := link.LoadPinnedLink(pin, nil)
	if err == nil {
		if same, err := sameProgram(old, p); err == nil && same {
			return old, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("kernelguard: load pinned link %s: %w", pin, err)
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: p})
	if err != nil {
		if old != nil {
			old.Close()
		}
		return nil, fmt.Errorf("kernelguard: attach %s: %w", p, err)
	}
	// The new program runs: only now let the old one go. Both run for a
	// moment, which is only stricter.
	if old != nil {
		old.Unpin()
		old.Close()
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, fmt.Errorf("kernelguard: pin %s: %w", pin, err)
	}
	return l, nil
}

func sameProgram(l link.Link, p *ebpf.Program) (bool, error) {
	li, err := l.Info()
	if err != nil {
		return false, err
	}
	old, err := ebpf.NewProgramFromID(li.Program)
	if err != nil {
		return false, err
	}
	defer old.Close()
	oi, err := old.Info()
	if err != nil {
		return false, err
	}
	ni, err := p.Info()
	if err != nil {
		return false, err
	}
	om, _ := oi.MapIDs()
	nm, _ := ni.MapIDs()
	slices.Sort(om)
	slices.Sort(nm)
	return oi.Tag == ni.Tag && slices.Equal(om, nm), nil
}

// Close releases this process's handles. The pinned guard stays in force.
func (g *Guard) Close() error {
	if g.link != nil {
		g.link.Close()
	}
	g.coll.Close()
	return nil
}

// Remove unpins the guard at pinDir and removes the directory. The program
// detaches before Remove returns, unless another process holds the guard
// (a running daemon's Guard): raw tracepoint links cannot be detached from
// outside, so it then detaches when that process closes it or exits. The
// maps go with their last holder. Removing a directory with no guard is
// not an error. Afterwards nothing guards the stubs: the stub table is gone
// with the maps, so a later Load starts empty.
func Remove(pinDir string) error {
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, name := range pinNames() {
		p := filepath.Join(pinDir, name)
		var l link.Link
		if name == linkPin {
			// Hold the link while unpinning it, so that the last reference
			// goes with our close, which detaches the program before it
			// returns; the unpin's own put would detach it later, from a
			// kernel work queue.
			l, _ = link.LoadPinnedLink(p, nil)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		if l != nil {
			l.Close()
		}
	}
	if err := os.Remove(pinDir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kernelguard: remove %s: %w", pinDir, err)
	}
	return nil
}

// Exempt registers process pid (its thread group) as a Strata process: it
// may probe stubs for holes (the daemon's own SEEK_DATA/SEEK_HOLE on stubs,
// the holder of its fanotify group). The registration names the process's
// start time, so a later process that reuses the pid is not exempt.
// Registrations of processes gone are pruned on each call.
func (g *Guard) Exempt(pid int) error {
	start, err := startTicks(pid)
	if err != nil {
		return err
	}
	m := g.coll.Maps[guardMapSgExempt]
	if err := m.Put(uint32(pid), start); err != nil {
		return fmt.Errorf("kernelguard: exempt %d: %w", pid, err)
	}
	var k uint32
	var v uint64
	var stale []uint32
	for it := m.Iterate(); it.Next(&k, &v); {
		if s, err := startTicks(int(k)); err != nil || s != v {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		m.Delete(k)
	}
	return nil
}

// startTicks reads field 22 of /proc/PID/stat: the start time in clock ticks
// since boot, which the guard compares with task->start_boottime / 10 ms.
func startTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("kernelguard: %w", err)
	}
	// comm may hold spaces and parentheses: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("kernelguard: malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("kernelguard: malformed /proc/%d/stat", pid)
	}
	v, err := strconv.ParseUint(f[19], 10, 64) // field 22: f[0] is field 3
	if err != nil {
		return 0, fmt.Errorf("kernelguard: start time in /proc/%d/stat: %w", pid, err)
	}
	return v, nil
}
