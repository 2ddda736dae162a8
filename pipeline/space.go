package pipeline

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoSpace is what every out-of-space error of a watched place matches
// (errors.Is): a *SpaceError.
var ErrNoSpace = errors.New("out of space")

// Space tuning.
const (
	// minReserve and maxReserve bound Reserve.
	minReserve = 16 << 20
	maxReserve = 1 << 30
	// minInodes: fewer free inodes than this is out of space too.
	minInodes = 64
	// DefaultSpaceInterval is how often a Space looks at its filesystem.
	DefaultSpaceInterval = time.Second
	// probeBytes is what a Space writes (and fsyncs) to check that writes
	// work again before it ends the condition: statfs does not show
	// quotas.
	probeBytes = 64 << 10
)

// spaceHold is the least time a reported ENOSPC keeps a place out of
// space, even when its filesystem shows room at once (a failed write that
// removed its own temporary file). A variable for tests.
var spaceHold = 2 * time.Second

// Reserve is the room Strata keeps free on a filesystem it writes to: 1 %
// of its size, at least 16 MiB, at most 1 GiB. Below it no new work
// starts, so that the event log, the catalog and work in flight still have
// room to finish; work resumes once twice the reserve is free.
func Reserve(total uint64) uint64 { return min(max(total/100, minReserve), maxReserve) }

// IsNoSpace reports whether err means a filesystem (or a quota) is full:
// ENOSPC, EDQUOT or ErrNoSpace anywhere in its chain, or, for errors that
// lost their errno on the way (nats-server and Pebble log lines), the
// kernel's message for them.
func IsNoSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrNoSpace) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	return isNoSpaceText(err.Error())
}

func isNoSpaceText(s string) bool {
	return strings.Contains(s, "no space left on device") || strings.Contains(s, "disk quota exceeded")
}

// FSInfo describes the filesystem a path is on.
type FSInfo struct {
	// Mount is its mount point, Device the mounted source (e.g.
	// /dev/sdb1), Type the filesystem type.
	Mount  string `json:"mount"`
	Device string `json:"device"`
	Type   string `json:"type"`
	// Free is the bytes Strata may still write (for root the free blocks,
	// for other users the blocks available to them), Total the size.
	Free  uint64 `json:"free_bytes"`
	Total uint64 `json:"total_bytes"`
	// FreeInodes and Inodes count inodes (0 Inodes: the filesystem does
	// not count them).
	FreeInodes uint64 `json:"free_inodes"`
	Inodes     uint64 `json:"inodes"`
}

// FreeString is e.g. "12 MiB of 240 MiB free".
func (f FSInfo) FreeString() string {
	s := fmt.Sprintf("%s of %s free", humanBytes(f.Free), humanBytes(f.Total))
	if f.Inodes > 0 && f.FreeInodes < minInodes {
		s += fmt.Sprintf(", %d inodes free", f.FreeInodes)
	}
	return s
}

// where names the filesystem for a message: "ext4 /dev/loop3 mounted at
// /mnt/data".
func (f FSInfo) where() string {
	if f.Mount == "" {
		return "its filesystem"
	}
	return strings.TrimSpace(f.Type+" "+f.Device) + " mounted at " + f.Mount
}

// StatFS describes the filesystem path is on (its mount from
// /proc/self/mountinfo; Mount is empty if that cannot be read).
func StatFS(path string) (FSInfo, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return FSInfo{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bsize := uint64(sfs.Bsize)
	info := FSInfo{Total: sfs.Blocks * bsize, Free: sfs.Bavail * bsize, FreeInodes: sfs.Ffree, Inodes: sfs.Files}
	if os.Geteuid() == 0 {
		info.Free = sfs.Bfree * bsize // root may use the reserved blocks
	}
	info.Mount, info.Device, info.Type = mountOf(path)
	return info, nil
}

// mountOf finds the mount that path is on: the mount of path's device
// whose mount point is the longest prefix of path.
func mountOf(path string) (mount, device, fstype string) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = path
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		return "", "", ""
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", ""
	}
	defer f.Close()
	want := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional…] - type source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || len(fields) < sep+3 || fields[2] != want {
			continue
		}
		mp := unescapeMount(fields[4])
		if (real == mp || mp == "/" || strings.HasPrefix(real, mp+"/")) && len(mp) >= len(mount) {
			mount, fstype, device = mp, fields[sep+1], unescapeMount(fields[sep+2])
		}
	}
	return mount, device, fstype
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// SpaceError is the error of work refused or stopped because a watched
// place is out of space. It matches ErrNoSpace.
type SpaceError struct {
	Place   string
	Path    string
	FS      FSInfo
	Reserve uint64
	// Err is the error that reported it (nil when Strata saw it coming).
	Err error
}

func (e *SpaceError) Error() string {
	return fmt.Sprintf("the %s %s is out of space (%s, %s; Strata keeps %s free): %s",
		e.Place, e.Path, e.FS.where(), e.FS.FreeString(), humanBytes(e.Reserve), spaceHint(e.FS))
}

// Is makes a SpaceError match ErrNoSpace.
func (e *SpaceError) Is(target error) bool { return target == ErrNoSpace }

// Unwrap returns the error that reported the condition, if any.
func (e *SpaceError) Unwrap() error { return e.Err }

func spaceHint(f FSInfo) string {
	if f.Mount == "" {
		return "free space on its filesystem; Strata resumes by itself"
	}
	return "free space on " + f.Device + " mounted at " + f.Mount + "; Strata resumes by itself"
}

// SpaceConfig describes a place Strata writes to.
type SpaceConfig struct {
	// Key is the condition's key (e.g. "space:data"), Place how an
	// operator knows the place ("data directory"), Path its directory.
	Key, Place, Path string
	// Conditions receives the condition; required.
	Conditions *Conditions
	// Interval is how often the filesystem is looked at
	// (DefaultSpaceInterval).
	Interval time.Duration
	// Reserve is the room to keep free (0: Reserve of the size).
	Reserve uint64
	// Effect says what Strata does while the place is full (default: new
	// work is paused).
	Effect string
	// Foreign: the place is not Strata's (a hot tree, where being nearly
	// full is normal and the watermarks' business): only a reported
	// failure puts it out of space, and nothing is written there to probe
	// for room; twice the reserve free by statfs ends the condition.
	Foreign bool
}

// Space watches the filesystem of one place Strata writes to — the data
// directory (event log, catalog, staging), and the same way a tier or a
// hot tree — and keeps its out-of-space condition: set when the free room
// falls below the reserve or when anyone reports an ENOSPC/EDQUOT there
// (Report), cleared by Run once twice the reserve is free again, a probe
// write succeeds and every recovery hook (OnRecover) has run. Work that
// needs the place asks Full or Err before it starts and Waits while it is
// full; nothing spins.
type Space struct {
	cfg  SpaceConfig
	kick chan struct{}

	mu struct {
		sync.Mutex
		full bool
		// room is closed while the place is not full.
		room       chan struct{}
		fs         FSInfo
		reserve    uint64
		lastErr    error
		reportedAt time.Time
		recover    []func(context.Context) error
	}
}

// NewSpace returns the watcher of one place; call Run to keep it current.
// It starts as not full.
func NewSpace(cfg SpaceConfig) *Space {
	cfg.Interval = cmp.Or(cfg.Interval, DefaultSpaceInterval)
	cfg.Effect = cmp.Or(cfg.Effect, "no new work starts; it resumes by itself once there is room")
	s := &Space{cfg: cfg, kick: make(chan struct{}, 1)}
	s.mu.room = make(chan struct{})
	close(s.mu.room)
	if fs, err := StatFS(cfg.Path); err == nil {
		s.mu.fs = fs
		s.mu.reserve = s.reserveFor(fs)
	}
	return s
}

// Key returns the condition key, Place the name of the place and Path its
// directory.
func (s *Space) Key() string   { return s.cfg.Key }
func (s *Space) Place() string { return s.cfg.Place }
func (s *Space) Path() string  { return s.cfg.Path }

// Contains reports whether path is the place's directory or inside it.
func (s *Space) Contains(path string) bool {
	p := filepath.Clean(s.cfg.Path)
	return path == p || strings.HasPrefix(path, p+"/") || p == "/"
}

// OnRecover adds fn to what runs, in order, once the filesystem has room
// again and before the condition ends; while fn fails the place stays out
// of space (fn is tried again at the next look). The event server uses it
// to restart JetStream after a write error.
func (s *Space) OnRecover(fn func(context.Context) error) {
	s.mu.Lock()
	s.mu.recover = append(s.mu.recover, fn)
	s.mu.Unlock()
}

// Full reports whether the place is out of space.
func (s *Space) Full() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.full
}

// Err returns a *SpaceError while the place is out of space, else nil.
func (s *Space) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mu.full {
		return nil
	}
	return s.errLocked()
}

func (s *Space) errLocked() *SpaceError {
	return &SpaceError{Place: s.cfg.Place, Path: s.cfg.Path, FS: s.mu.fs, Reserve: s.mu.reserve, Err: s.mu.lastErr}
}

// Wait blocks while the place is out of space; it returns nil once there
// is room, or ctx.Err().
func (s *Space) Wait(ctx context.Context) error {
	for {
		s.mu.Lock()
		room := s.mu.room
		s.mu.Unlock()
		select {
		case <-room:
			if !s.Full() {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Report tells the Space that err happened on its place. If err is an
// out-of-space error (IsNoSpace) the place is out of space from now on,
// until Run sees room again, and Report returns true; any other error is
// ignored (false).
func (s *Space) Report(err error) bool {
	if !IsNoSpace(err) {
		return false
	}
	var se *SpaceError
	if errors.As(err, &se) && se.Err == nil {
		return true // our own refusal coming back: nothing new
	}
	fs, ferr := StatFS(s.cfg.Path)
	s.mu.Lock()
	if ferr == nil {
		s.mu.fs = fs
		s.mu.reserve = s.reserveFor(fs)
	}
	s.mu.lastErr = err
	s.mu.reportedAt = time.Now()
	s.setFullLocked()
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return true
}

// setFullLocked sets the condition (again: it refreshes the last error).
func (s *Space) setFullLocked() {
	if !s.mu.full {
		s.mu.full = true
		s.mu.room = make(chan struct{})
	}
	c := Condition{
		Key: s.cfg.Key, Kind: KindNoSpace, Place: s.cfg.Place, Path: s.cfg.Path, FS: s.mu.fs,
		Effect: s.cfg.Effect, Hint: spaceHint(s.mu.fs),
	}
	if s.mu.lastErr != nil {
		c.LastError, c.LastAt = s.mu.lastErr.Error(), s.mu.reportedAt
	} else {
		c.LastError = fmt.Sprintf("only %s (Strata keeps %s free)", s.mu.fs.FreeString(), humanBytes(s.mu.reserve))
		c.LastAt = time.Now()
	}
	s.cfg.Conditions.Set(c)
}

func (s *Space) reserveFor(fs FSInfo) uint64 {
	if s.cfg.Reserve > 0 {
		return s.cfg.Reserve
	}
	return Reserve(fs.Total)
}

// Run keeps the condition current until ctx ends: it looks at the
// filesystem every Interval, and at once after a Report.
func (s *Space) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		s.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
	}
}

// check looks at the filesystem once: it sets the condition below the
// reserve, and ends it (probe write, recovery hooks) above twice the
// reserve.
func (s *Space) check(ctx context.Context) {
	fs, err := StatFS(s.cfg.Path)
	if err != nil {
		return // a missing place is someone else's condition
	}
	reserve := s.reserveFor(fs)
	low := !s.cfg.Foreign && (fs.Free < reserve || (fs.Inodes > 0 && fs.FreeInodes < minInodes))
	room := fs.Free >= 2*reserve && (fs.Inodes == 0 || fs.FreeInodes >= 2*minInodes)
	s.mu.Lock()
	s.mu.fs, s.mu.reserve = fs, reserve
	full, reported, hooks := s.mu.full, s.mu.reportedAt, s.mu.recover
	switch {
	case !full && low:
		s.mu.lastErr = nil
		s.setFullLocked()
		s.mu.Unlock()
		return
	case full && low:
		s.setFullLocked() // refresh what status shows
	}
	s.mu.Unlock()
	if !full || !room || time.Since(reported) < spaceHold {
		return
	}
	if !s.cfg.Foreign {
		if err := s.probe(); err != nil {
			s.Report(err)
			return
		}
	}
	for _, fn := range hooks {
		if err := fn(ctx); err != nil {
			s.mu.Lock()
			s.mu.lastErr = fmt.Errorf("room again, but recovering failed (retrying): %w", err)
			s.setFullLocked()
			s.mu.Unlock()
			return
		}
	}
	// The condition ends (and says so) before anyone waiting is woken,
	// under the lock a Report takes to set it again.
	s.mu.Lock()
	s.mu.full = false
	s.mu.lastErr = nil
	s.cfg.Conditions.Clear(s.cfg.Key)
	close(s.mu.room)
	s.mu.Unlock()
}

// probe writes and syncs a small file in the place and removes it.
func (s *Space) probe() error {
	p := filepath.Join(s.cfg.Path, ".strata-space-probe")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(make([]byte, probeBytes))
	if werr == nil {
		werr = f.Sync()
	}
	cerr := f.Close()
	rerr := os.Remove(p)
	if werr != nil {
		return werr
	}
	if cerr != nil {
		return cerr
	}
	if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return rerr
	}
	return nil
}

// blame returns the space among spaces that err is about: the one a
// *SpaceError names, else the one (the deepest) holding the path of a
// failed file operation in err's chain, else — for an out-of-space error
// that names no path — the first one that is full. Nil when err is not an
// out-of-space error or concerns no watched place.
func blame(spaces []*Space, err error) *Space {
	if len(spaces) == 0 || !IsNoSpace(err) {
		return nil
	}
	var se *SpaceError
	if errors.As(err, &se) {
		for _, s := range spaces {
			if s.cfg.Path == se.Path {
				return s
			}
		}
	}
	var paths []string
	var pe *fs.PathError
	if errors.As(err, &pe) {
		paths = append(paths, pe.Path)
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		paths = append(paths, le.New, le.Old)
	}
	if len(paths) > 0 {
		var best *Space
		for _, p := range paths {
			for _, s := range spaces {
				if s.Contains(p) && (best == nil || len(s.cfg.Path) > len(best.cfg.Path)) {
					best = s
				}
			}
		}
		return best
	}
	for _, s := range spaces {
		if s.Full() {
			return s
		}
	}
	return nil
}
