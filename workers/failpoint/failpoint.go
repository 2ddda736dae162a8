// Package failpoint lets crash tests stop the daemon at named points between
// two steps of a piece of work. STRATA_FAILPOINTS holds a comma-separated
// list of names; when the code reaches a listed point, the process kills
// itself with SIGKILL (no deferred function, no flush: exactly what a power
// cut or kill -9 does to the process).
//
// With the variable unset, Hit costs one map lookup on a nil map.
package failpoint

import (
	"os"
	"strings"
	"syscall"
)

// EnvVar names the environment variable read by New.
const EnvVar = "STRATA_FAILPOINTS"

// Set is a set of armed failpoints. The zero value arms none.
type Set struct {
	armed map[string]bool
}

// New returns the failpoints armed by the environment.
func New() Set {
	return Parse(os.Getenv(EnvVar))
}

// Parse returns the failpoints named in a comma-separated list.
func Parse(list string) Set {
	var s Set
	for _, name := range strings.Split(list, ",") {
		if name = strings.TrimSpace(name); name != "" {
			if s.armed == nil {
				s.armed = map[string]bool{}
			}
			s.armed[name] = true
		}
	}
	return s
}

// Armed reports whether name is armed.
func (s Set) Armed(name string) bool { return s.armed[name] }

// Hit kills the process with SIGKILL if name is armed.
func (s Set) Hit(name string) {
	if s.armed[name] {
		os.Stderr.WriteString("failpoint " + name + ": killing process\n")
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL cannot be caught; never return
	}
}
