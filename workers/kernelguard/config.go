//go:build linux

package kernelguard

import (
	"cmp"
	"fmt"
	"path/filepath"
)

// DefaultPinDir is where Load pins the guard's maps and link.
const DefaultPinDir = "/sys/fs/bpf/strata"

// DefaultMaxStubs is the default capacity of the stub table. The table
// allocates its entries on demand (about 100 bytes each); only its bucket
// array, 16 bytes per slot of the next power of two, is allocated up front:
// 16 MiB for the default.
const DefaultMaxStubs = 1 << 20

// maxMaxStubs bounds Config.MaxStubs (1 GiB of buckets).
const maxMaxStubs = 1 << 26

// Action is what the guard does to a process that is about to learn that a
// stub has a hole.
type Action string

const (
	// ActionKill sends SIGKILL, delivered before the lseek or ioctl returns
	// to user space: the prober never acts on the "hole" answer.
	ActionKill Action = "kill"
	// ActionLog only records the probe (Records, ReadStatus). The prober
	// gets the kernel's answer and may copy zeros.
	ActionLog Action = "log"
)

// Config configures the guard. The zero value, after EnsureDefaults, is the
// recommended setting.
type Config struct {
	// PinDir is the bpffs directory of the pins. Default DefaultPinDir.
	PinDir string
	// Action for a probe of a stub's hole. Default ActionKill. A Load with
	// another Action changes it for the pinned guard at once.
	Action Action
	// MaxStubs is the capacity of the stub table, used when Load creates
	// it. A table already pinned keeps its capacity (Status.MaxStubs); to
	// change it, Remove the guard, Load, and add every stub again. Default
	// DefaultMaxStubs.
	MaxStubs int
}

// EnsureDefaults fills in unset fields.
func (c *Config) EnsureDefaults() {
	c.PinDir = cmp.Or(c.PinDir, DefaultPinDir)
	c.Action = cmp.Or(c.Action, ActionKill)
	c.MaxStubs = cmp.Or(c.MaxStubs, DefaultMaxStubs)
}

// Validate reports a configuration the guard cannot use.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.PinDir) || filepath.Clean(c.PinDir) != c.PinDir {
		return fmt.Errorf("%w: pin directory %q is not a clean absolute path", ErrBadConfig, c.PinDir)
	}
	if c.Action != ActionKill && c.Action != ActionLog {
		return fmt.Errorf("%w: action %q is not %q or %q", ErrBadConfig, c.Action, ActionKill, ActionLog)
	}
	if c.MaxStubs < 1 || c.MaxStubs > maxMaxStubs {
		return fmt.Errorf("%w: max stubs %d is not in [1, %d]", ErrBadConfig, c.MaxStubs, maxMaxStubs)
	}
	return nil
}

// settings mirrors struct settings in bpf/guard.bpf.c.
type settings struct {
	Kill uint32
	_    uint32
}

func (c Config) settings() settings {
	var s settings
	if c.Action == ActionKill {
		s.Kill = 1
	}
	return s
}
