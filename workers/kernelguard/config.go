//go:build linux

package kernelguard

import (
	"cmp"
	"fmt"
	"path/filepath"
	"syscall"
)

// DefaultPinDir is where Load pins the guard's maps and links.
const DefaultPinDir = "/sys/fs/bpf/strata"

// ProbeAction is what the guard does to a process that probes a stub for
// holes (lseek SEEK_DATA or SEEK_HOLE).
type ProbeAction string

const (
	// ProbeKill sends SIGKILL, delivered before the lseek returns to user
	// space, so the prober never acts on the "all hole" answer.
	ProbeKill ProbeAction = "kill"
	// ProbeLog only reports the probe (Records, Status).
	ProbeLog ProbeAction = "log"
)

// Config configures the guard. The zero value, after EnsureDefaults, is the
// recommended setting.
type Config struct {
	// PinDir is the bpffs directory of the pins. Default DefaultPinDir.
	PinDir string
	// Errno is returned to a program that opens, reads, writes, mmaps or
	// truncates an unguarded stub. Default EIO. One of AllowedErrnos.
	Errno syscall.Errno
	// ProbeAction for hole probes of stubs. Default ProbeKill.
	ProbeAction ProbeAction
	// NoReadWrite leaves out the file_permission, mmap_file and
	// path_truncate hooks: then only opens are refused, and a program that
	// opened a stub while it was guarded reads zeros after the daemon dies.
	NoReadWrite bool
	// AllowMarkerChanges lets any process with CAP_SYS_ADMIN set or remove
	// the marker. By default only exempt processes may.
	AllowMarkerChanges bool
	// NoReleaseKill leaves alone a reader whose held event a dying
	// fanotify group allowed (it reads zeros). By default it is killed.
	NoReleaseKill bool
}

// AllowedErrnos are the values Config.Errno may take: errors a program
// reports as a failed read rather than retrying forever or taking for "no
// such file".
var AllowedErrnos = []syscall.Errno{syscall.EIO, syscall.EPERM, syscall.EACCES, syscall.ENODATA, syscall.EBUSY, syscall.ETXTBSY}

// EnsureDefaults fills in unset fields.
func (c *Config) EnsureDefaults() {
	c.PinDir = cmp.Or(c.PinDir, DefaultPinDir)
	c.Errno = cmp.Or(c.Errno, syscall.EIO)
	c.ProbeAction = cmp.Or(c.ProbeAction, ProbeKill)
}

// Validate reports a configuration the guard cannot use.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.PinDir) {
		return fmt.Errorf("%w: pin directory %q is not absolute", ErrBadConfig, c.PinDir)
	}
	ok := false
	for _, e := range AllowedErrnos {
		ok = ok || e == c.Errno
	}
	if !ok {
		return fmt.Errorf("%w: errno %d (%v) is not one of %v", ErrBadConfig, int(c.Errno), c.Errno, AllowedErrnos)
	}
	if c.ProbeAction != ProbeKill && c.ProbeAction != ProbeLog {
		return fmt.Errorf("%w: probe action %q is not %q or %q", ErrBadConfig, c.ProbeAction, ProbeKill, ProbeLog)
	}
	return nil
}

// settings mirrors struct settings in bpf/guard.bpf.c.
type settings struct {
	NegErrno      int32 // -Errno
	ProbeKill     uint32
	ProtectMarker uint32
	KillReleased  uint32
}

func (c Config) settings() settings {
	b := func(v bool) uint32 {
		if v {
			return 1
		}
		return 0
	}
	return settings{
		NegErrno:      -int32(c.Errno),
		ProbeKill:     b(c.ProbeAction == ProbeKill),
		ProtectMarker: b(!c.AllowMarkerChanges),
		KillReleased:  b(!c.NoReleaseKill),
	}
}
