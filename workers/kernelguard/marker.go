//go:build linux

package kernelguard

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// MarkerName is the extended attribute that makes a file a stub in the
// kernel's eyes. The "security.bpf." prefix is the only one besides "user."
// that bpf_get_file_xattr may read, and unlike "user." it can be changed
// only with CAP_SYS_ADMIN.
const MarkerName = "security.bpf.strata"

// markerValue is the marker's content: a format version byte.
var markerValue = []byte{'1'}

// SetMarker marks the open file fd as a stub. Call it after the file is
// marked with fanotify and before its data is punched out. With the guard
// loaded, only an exempt process (see Guard.Exempt) may set it.
func SetMarker(fd int) error {
	if err := unix.Fsetxattr(fd, MarkerName, markerValue, 0); err != nil {
		return fmt.Errorf("kernelguard: set %s: %w", MarkerName, err)
	}
	return nil
}

// ClearMarker removes the stub marker from fd, once the file is whole
// again. A file without the marker is not an error.
func ClearMarker(fd int) error {
	err := unix.Fremovexattr(fd, MarkerName)
	if err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("kernelguard: remove %s: %w", MarkerName, err)
	}
	return nil
}

// HasMarker reports whether fd carries the stub marker.
func HasMarker(fd int) (bool, error) {
	var buf [8]byte
	_, err := unix.Fgetxattr(fd, MarkerName, buf[:])
	switch {
	case err == nil, errors.Is(err, unix.ERANGE):
		return true, nil
	case errors.Is(err, unix.ENODATA):
		return false, nil
	default:
		return false, fmt.Errorf("kernelguard: read %s: %w", MarkerName, err)
	}
}
