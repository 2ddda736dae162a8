// Package sdnotify speaks systemd's service notification protocol
// (sd_notify(3)) without libsystemd: one datagram of newline-separated
// VAR=VALUE assignments to the unix datagram socket named by
// $NOTIFY_SOCKET (a path, or an abstract name when it starts with @). It
// is how a Type=notify unit says READY=1, STOPPING=1, STATUS=… and
// WATCHDOG=1.
//
// FromEnv takes the socket and the watchdog interval from the environment
// and removes them from it, so that processes this one starts (a holder,
// rclone) do not speak for it. Without $NOTIFY_SOCKET the Notifier is nil
// and every method does nothing: a daemon started by hand behaves the
// same. Only cmd/strata imports it.
package sdnotify

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Notifier sends notifications to one socket. A nil *Notifier sends
// nothing.
type Notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration // 0: no watchdog asked for
}

// FromEnv reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID, unsets
// them, and returns a Notifier, or nil when $NOTIFY_SOCKET is not set. A
// name that is neither a path nor an abstract name is an error.
func FromEnv() (*Notifier, error) {
	name := os.Getenv("NOTIFY_SOCKET")
	usec := os.Getenv("WATCHDOG_USEC")
	pid := os.Getenv("WATCHDOG_PID")
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		os.Unsetenv(k)
	}
	if name == "" {
		return nil, nil
	}
	if name[0] != '/' && name[0] != '@' {
		return nil, errors.New("sdnotify: NOTIFY_SOCKET is neither a path nor an abstract name: " + name)
	}
	// Go's unix addresses map a leading @ to the abstract namespace.
	n := &Notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}}
	if us, err := strconv.ParseUint(usec, 10, 63); err == nil && us > 0 && (pid == "" || pid == strconv.Itoa(os.Getpid())) {
		n.watchdog = time.Duration(us) * time.Microsecond
	}
	return n, nil
}

// Notify sends the assignments (e.g. "READY=1", "STATUS=ready") in one
// datagram.
func (n *Notifier) Notify(assignments ...string) error {
	if n == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(strings.Join(assignments, "\n")))
	return err
}

// Watchdog is the interval systemd expects WATCHDOG=1 within
// (WatchdogSec=), or 0 when none is asked for. Send at half of it.
func (n *Notifier) Watchdog() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}
