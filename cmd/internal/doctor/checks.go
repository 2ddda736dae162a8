package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// bytes formats n with a binary unit: "512 B", "1.5 MiB".
func bytes(n uint64) string {
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

// FS is a filesystem as the caller measured it (in Strata,
// pipeline.StatFS with the reserve the daemon keeps free there).
type FS struct {
	Type, Device, Mount string
	Free, Total         uint64
	Reserve             uint64 // below it no new work starts
	LowInodes           bool   // almost no inodes left
	FreeText            string // "3.2 MiB of 20 GiB free"
}

// Space checks a place Strata writes to (the data directory, staging)
// against the reserve the daemon keeps free there: below it no new work
// starts. err is the error of measuring it.
func Space(place, path string, fs FS, err error) Finding {
	f := Finding{Check: CheckSpace, Subject: place + " " + path, Status: OK}
	switch {
	case errors.Is(err, os.ErrNotExist):
		f.Detail = "does not exist yet (strata run creates it)"
		return f
	case err != nil:
		f.Status, f.Detail = Problem, err.Error()
		f.Fix = "check that " + path + " is readable by root and its disk is mounted"
		return f
	}
	f.Detail = fmt.Sprintf("%s %s mounted at %s, %s (Strata keeps %s free)", fs.Type, fs.Device, fs.Mount, fs.FreeText, bytes(fs.Reserve))
	if fs.Free < fs.Reserve || fs.LowInodes {
		f.Status = Problem
		f.Detail += "; out of space: no new work starts until there is room"
		f.Fix = "free space on " + fs.Device + " mounted at " + fs.Mount
	}
	return f
}

// HotTree checks one hot tree: it is a directory, its filesystem lets
// stubs carry the interceptor's marks in mode, and it has room. supported
// and why are interceptor.Supported's answer for path; highPct is the
// policy's high watermark; fs its filesystem (fsErr: not measured).
func HotTree(path string, preAccess, supported bool, why string, highPct float64, fs FS, fsErr error) []Finding {
	f := Finding{Check: CheckHotTree, Subject: path, Status: OK, Detail: why}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		f.Status, f.Detail = Problem, err.Error()
		f.Fix = "create it or mount its disk, or remove it from the configuration ([[hot]] path)"
		return []Finding{f}
	case !st.IsDir():
		f.Status, f.Detail = Problem, "not a directory"
		f.Fix = "a hot tree is a directory: fix [[hot]] path"
		return []Finding{f}
	}
	if !supported {
		if preAccess {
			f.Status = Problem
			f.Detail = "NOT SUPPORTED: " + why
			f.Fix = "put the hot tree on ext4, XFS or btrfs (only those allow pre-content marks): stubs there could not be guarded"
		} else {
			f.Status = Warning
			f.Detail = "open-perm mode: " + why
			f.Fix = "on Linux >= 6.14 with ext4, XFS or btrfs, pre-access mode recalls only the bytes read (interceptor.mode = \"auto\")"
		}
	}
	out := []Finding{f}
	if fsErr != nil {
		return out
	}
	sf := Finding{Check: CheckSpace, Subject: "hot tree " + path, Status: OK,
		Detail: fmt.Sprintf("%s %s mounted at %s, %s", fs.Type, fs.Device, fs.Mount, fs.FreeText)}
	if fs.Total > 0 {
		used := 100 * float64(fs.Total-min(fs.Free, fs.Total)) / float64(fs.Total)
		sf.Detail += fmt.Sprintf(" (%.0f%% used, high watermark %.0f%%)", used, highPct)
		switch {
		case fs.Free < fs.Reserve:
			sf.Status = Problem
			sf.Detail += "; nearly full: writes to it will fail, and a stub recalled now may not fit"
			sf.Fix = "archive now (strata archive --wait DIR), or free space on " + fs.Device
		case highPct > 0 && used > highPct:
			sf.Status = Warning
			sf.Detail += "; above the high watermark: the scanner archives the oldest files, any age"
			sf.Fix = "let the scanner work (strata status shows its progress), or archive a tree now: strata archive --wait DIR"
		}
	}
	return append(out, sf)
}

// Credentials checks that a file of secrets (the daemon's NATS
// credentials, a configuration holding S3 keys) is readable by its owner
// alone and owned by root.
func Credentials(what, path string) Finding {
	f := Finding{Check: CheckCredentials, Subject: path, Status: OK}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			f.Detail = what + ": not there yet (strata run creates it)"
			return f
		}
		f.Status, f.Detail, f.Fix = Problem, err.Error(), "check the permissions of "+path
		return f
	}
	mode := st.Mode & 0o777
	f.Detail = fmt.Sprintf("%s: mode %04o, owner uid %d", what, mode, st.Uid)
	switch {
	case mode&0o077 != 0:
		f.Status = Problem
		f.Detail += ": others can read the secrets in it"
		f.Fix = "chmod 600 " + path
	case st.Uid != 0:
		f.Status = Warning
		f.Detail += ": not owned by root"
		f.Fix = "chown root: " + path
	}
	return f
}

// NATS checks the client listener: with a daemon answering, its URL; with
// none, that listen:port is free for it (another program on the port makes
// strata run fail). TLS is not offered on the client port, so an address
// other than loopback is a problem (credentials would cross in clear).
func NATS(listen string, port int, daemonURL string, daemonUp bool) Finding {
	addr := net.JoinHostPort(listen, fmt.Sprint(port))
	f := Finding{Check: CheckNATS, Subject: addr, Status: OK}
	if ip := net.ParseIP(listen); listen != "localhost" && (ip == nil || !ip.IsLoopback()) {
		f.Status = Problem
		f.Detail = "listens on " + listen + ", not loopback, without TLS: the CLI's credentials would cross the network in clear"
		f.Fix = "set nats.listen = \"127.0.0.1\" (other hosts join over TLS routes, not the client port)"
		return f
	}
	switch {
	case port < 0:
		f.Detail = "no TCP listener (nats.port < 0): the CLI and subscribers cannot reach the daemon"
		if daemonUp {
			f.Detail = "the daemon answers"
		}
		return f
	case daemonUp:
		f.Subject = daemonURL
		f.Detail = "loopback listener, credentials required; the daemon answers"
		return f
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		f.Status = Problem
		f.Detail = "cannot listen on " + addr + ": " + err.Error()
		f.Fix = fmt.Sprintf("another program holds port %d (ss -ltnp 'sport = :%d'): stop it, or choose another with nats.port", port, port)
		return f
	}
	l.Close()
	f.Detail = "free for the daemon (loopback, credentials required)"
	return f
}

// Rclone checks that the rclone program a tier uses runs.
func Rclone(ctx context.Context, tierName, bin string) Finding {
	f := Finding{Check: CheckTier, Subject: tierName, Status: OK}
	path, err := exec.LookPath(bin)
	if err != nil {
		f.Status, f.Detail = Problem, "rclone tier: "+err.Error()
		f.Fix = "install rclone (apt-get install rclone), or set the tier's binary to its path"
		return f
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "version").Output()
	if err != nil {
		f.Status, f.Detail = Problem, fmt.Sprintf("rclone tier: %s version: %v", path, err)
		f.Fix = "reinstall rclone (apt-get install --reinstall rclone)"
		return f
	}
	first, _, _ := strings.Cut(string(out), "\n")
	f.Detail = "rclone tier: " + path + " (" + strings.TrimSpace(first) + ")"
	return f
}

// timeError is adjtimex's TIME_ERROR: the kernel clock is not kept in step
// by NTP (or was never set by it).
const timeError = 5

// Clock checks that the clock is sane: after the newest event of the log
// (a clock set back records events out of order and makes ages wrong) and
// after floor (a clock left at 1970 or at a board's default date), and
// whether NTP keeps it in step. last is the time of the newest event (zero
// if unknown).
func Clock(now, last, floor time.Time) Finding {
	f := Finding{Check: CheckClock, Status: OK, Detail: "now " + now.Format(time.RFC3339)}
	switch {
	case now.Before(floor):
		f.Status = Problem
		f.Detail += ", before " + floor.Format(time.DateOnly) + ": the clock is wrong"
		f.Fix = "set the clock (timedatectl set-ntp true, or chrony): file ages decide what is archived"
		return f
	case !last.IsZero() && last.Sub(now) > time.Minute:
		f.Status = Problem
		f.Detail += fmt.Sprintf(", %s behind the newest event of the log (%s): the clock went back", last.Sub(now).Round(time.Second), last.Format(time.RFC3339))
		f.Fix = "set the clock right (timedatectl set-ntp true, or chrony); until it passes the log's time, event times go backwards"
		return f
	}
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	switch {
	case err != nil:
		f.Detail += ", NTP state unknown: " + err.Error()
	case state == timeError:
		f.Status = Warning
		f.Detail += ", not synchronised by NTP (adjtimex: TIME_ERROR)"
		f.Fix = "keep the clock in step: timedatectl set-ntp true (systemd-timesyncd), or install chrony"
	default:
		f.Detail += fmt.Sprintf(", synchronised (estimated error %d µs)", tx.Esterror)
	}
	return f
}

// Tier turns the outcome of a tier's check into a finding: err is
// nil when the probe (tier.WriteProbe, or a cheap question for tape)
// succeeded in took; unavailable says err means the tier cannot be
// reached (tier.ErrUnavailable).
func Tier(name, kind string, wrote bool, took time.Duration, err error, unavailable bool) Finding {
	f := Finding{Check: CheckTier, Subject: name, Status: OK}
	if err == nil {
		f.Detail = fmt.Sprintf("%s tier: wrote, read back and deleted a probe object in %s", kind, took.Round(time.Millisecond))
		if !wrote {
			f.Detail = fmt.Sprintf("%s tier answers (not written by doctor: a probe would cost a bundle on tape)", kind)
		}
		return f
	}
	f.Status = Problem
	f.Detail = fmt.Sprintf("%s tier: %v", kind, err)
	switch {
	case unavailable:
		f.Fix = "make the tier reachable: its disk mounted, its server up, its address and credentials right (strata status shows every tier)"
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		f.Fix = "free space on the tier, or add another tier"
	case errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		f.Fix = "the tier refuses writes: mount it read-write, or give Strata credentials that may write"
	default:
		f.Fix = "check the tier's configuration and credentials; the error above is the tier's own"
	}
	return f
}
