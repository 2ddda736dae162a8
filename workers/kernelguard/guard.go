//go:build linux

package kernelguard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// hook is one program of the guard and whether a Config wants it.
type hook struct {
	prog string
	want func(Config) bool
}

func always(Config) bool         { return true }
func readWrite(c Config) bool    { return !c.NoReadWrite }
func linkPin(prog string) string { return "link_" + prog }

// hooks lists every program, in attach order: the caches first, so a stub
// marked while Load runs is never missed.
var hooks = []hook{
	{guardProgSgInodePostSetxattr, always},
	{guardProgSgInodePostRemovexattr, always},
	{guardProgSgInodeSetxattr, always},
	{guardProgSgInodeRemovexattr, always},
	{guardProgSgFileOpen, always},
	{guardProgSgFilePermission, readWrite},
	{guardProgSgMmapFile, readWrite},
	{guardProgSgPathTruncate, readWrite},
	{guardProgSgFileIoctl, always},
	{guardProgSgFileIoctlCompat, always},
	{guardProgSgLlseek, always},
	{guardProgSgFanotifyReleased, always},
}

// Guard is a loaded guard. Closing it keeps the guard in the kernel (pins);
// Remove takes it out.
type Guard struct {
	cfg   Config
	coll  *ebpf.Collection
	links map[string]link.Link
}

// Load loads the guard and pins it under cfg.PinDir, or takes over the one
// already pinned there: maps are reused by name, a pinned program that is
// unchanged stays attached, a changed one is replaced by attaching the new
// program before the old link is unpinned, so the guard never lapses.
// Load is idempotent; call it at every daemon start.
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
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("kernelguard: %w", err)
	}
	spec, err := loadGuard()
	if err != nil {
		return nil, fmt.Errorf("kernelguard: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}})
	if err != nil {
		return nil, fmt.Errorf("kernelguard: load: %w", err)
	}
	g := &Guard{cfg: cfg, coll: coll, links: map[string]link.Link{}}
	if err := coll.Maps[guardMapSgSettings].Put(uint32(0), cfg.settings()); err != nil {
		g.Close()
		return nil, fmt.Errorf("kernelguard: write settings: %w", err)
	}
	for _, h := range hooks {
		if !h.want(cfg) {
			if err := unpin(filepath.Join(cfg.PinDir, linkPin(h.prog))); err != nil {
				g.Close()
				return nil, err
			}
			continue
		}
		l, err := attachPinned(cfg.PinDir, h.prog, coll.Programs[h.prog])
		if err != nil {
			g.Close()
			return nil, err
		}
		g.links[h.prog] = l
	}
	return g, nil
}

// attachPinned returns the link pinned for prog, replacing it when the
// pinned program differs from p (instructions or maps).
func attachPinned(dir, name string, p *ebpf.Program) (link.Link, error) {
	pin := filepath.Join(dir, linkPin(name))
	old, err := link.LoadPinnedLink(pin, nil)
	if err == nil {
		if same, err := sameProgram(old, p); err == nil && same {
			return old, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("kernelguard: load pinned link %s: %w", pin, err)
	}
	var l link.Link
	switch p.Type() {
	case ebpf.LSM:
		l, err = link.AttachLSM(link.LSMOptions{Program: p})
	default:
		l, err = link.AttachTracing(link.TracingOptions{Program: p})
	}
	if err != nil {
		if old != nil {
			old.Close()
		}
		return nil, fmt.Errorf("kernelguard: attach %s: %w", name, err)
	}
	// The new program is attached: only now let the old one go.
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

func unpin(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kernelguard: unpin %s: %w", path, err)
	}
	return nil
}

// Close releases this process's handles. The pinned guard stays in force.
func (g *Guard) Close() error {
	for _, l := range g.links {
		l.Close()
	}
	g.coll.Close()
	return nil
}

// Remove unpins the guard at pinDir: its programs detach once no process
// holds a Guard for it any more (a live Guard's links are detached here
// too where the kernel supports it).
func Remove(pinDir string) error {
	entries, err := os.ReadDir(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kernelguard: %w", err)
	}
	var errs []error
	// Links first, so no program runs against a half-removed set of maps.
	slices.SortStableFunc(entries, func(a, b os.DirEntry) int {
		return boolInt(!strings.HasPrefix(a.Name(), "link_")) - boolInt(!strings.HasPrefix(b.Name(), "link_"))
	})
	for _, e := range entries {
		p := filepath.Join(pinDir, e.Name())
		if strings.HasPrefix(e.Name(), "link_") {
			if l, err := link.LoadPinnedLink(p, nil); err == nil {
				l.Detach() // not every kernel can; then the unpin below detaches
				l.Close()
			}
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
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

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Exempt registers process pid (its thread group) as a Strata process: it
// may open unguarded stubs, probe them for holes and change the marker. The
// registration names the process's start time too, so a later process that
// reuses the pid is not exempt. Registrations of processes gone are pruned.
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

// Unexempt removes pid's registration.
func (g *Guard) Unexempt(pid int) error {
	err := g.coll.Maps[guardMapSgExempt].Delete(uint32(pid))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("kernelguard: unexempt %d: %w", pid, err)
	}
	return nil
}

// startTicks reads field 22 of /proc/PID/stat: the start time in clock ticks
// since boot, which the guard compares with task->start_boottime / 10ms.
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
	return strconv.ParseUint(f[19], 10, 64) // field 22: f[0] is field 3
}

// Kind tells what a Record reports.
type Kind uint32

// Record kinds (enum kind in bpf/guard.bpf.c).
const (
	DeniedOpen Kind = iota + 1
	DeniedReadWrite
	DeniedMmap
	DeniedTruncate
	RefusedExtentMap
	HoleProbe
	ReleasedRead
	MarkerRefused
)

func (k Kind) String() string {
	switch k {
	case DeniedOpen:
		return "denied-open"
	case DeniedReadWrite:
		return "denied-read-write"
	case DeniedMmap:
		return "denied-mmap"
	case DeniedTruncate:
		return "denied-truncate"
	case RefusedExtentMap:
		return "refused-extent-map"
	case HoleProbe:
		return "hole-probe"
	case ReleasedRead:
		return "released-read"
	case MarkerRefused:
		return "marker-refused"
	}
	return "kind-" + strconv.Itoa(int(k))
}

// Record is one action of the guard, for the daemon to log, publish and act
// on (recall the file whole so that a retry works).
type Record struct {
	Kind   Kind
	PID    int    // thread
	TGID   int    // process
	Comm   string // /proc/PID/comm of the thread
	Dev    uint64 // st_dev of the file (0 if unknown)
	Ino    uint64 // st_ino of the file
	Arg    int32  // whence (HoleProbe), ioctl cmd, fsnotify mask (ReleasedRead), access mask
	Offset int64  // lseek offset (HoleProbe)
	// Action is the errno returned, or 9 (SIGKILL) for a process killed,
	// or 0 when the guard only logged.
	Action uint32
}

// Killed reports whether the guard killed the process.
func (r Record) Killed() bool {
	return r.Action == uint32(unix.SIGKILL) && (r.Kind == HoleProbe || r.Kind == ReleasedRead)
}

// rawRecord mirrors struct record in bpf/guard.bpf.c.
type rawRecord struct {
	Ino    uint64
	Offset int64
	Dev    uint32
	Kind   uint32
	PID    uint32
	TGID   uint32
	Arg    int32
	Action uint32
	Comm   [16]byte
}

// RecordReader reads the guard's records. One reader at a time: the records
// are a single ring buffer, which fills (and drops, counted as
// Counters.EventsDropped) while nobody reads.
type RecordReader struct{ rd *ringbuf.Reader }

// Records opens the guard's record stream.
func (g *Guard) Records() (*RecordReader, error) {
	rd, err := ringbuf.NewReader(g.coll.Maps[guardMapSgRecords])
	if err != nil {
		return nil, fmt.Errorf("kernelguard: %w", err)
	}
	return &RecordReader{rd: rd}, nil
}

// Read blocks for the next record; after Close it returns os.ErrClosed.
func (r *RecordReader) Read() (Record, error) {
	rec, err := r.rd.Read()
	if err != nil {
		return Record{}, fmt.Errorf("kernelguard: read record: %w", err)
	}
	var raw rawRecord
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return Record{}, fmt.Errorf("kernelguard: decode record: %w", err)
	}
	out := Record{
		Kind: Kind(raw.Kind), PID: int(raw.PID), TGID: int(raw.TGID),
		Comm: string(bytes.TrimRight(raw.Comm[:], "\x00")),
		Ino:  raw.Ino, Arg: raw.Arg, Offset: raw.Offset, Action: raw.Action,
	}
	if raw.Dev != 0 {
		out.Dev = userDev(raw.Dev)
	}
	return out, nil
}

// Close stops the reader; a blocked Read returns.
func (r *RecordReader) Close() error { return r.rd.Close() }
