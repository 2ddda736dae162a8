//go:build linux

package kernelguard

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// stubKey mirrors struct stub_key in bpf/guard.bpf.c: the kernel's
// (sb->s_dev, i_ino) of a stub.
type stubKey struct {
	Dev uint32 // kernel encoding, see kernelDev
	_   uint32
	Ino uint64
}

// stubValue mirrors struct stub_value: the inode's generation, so that a
// file that reuses a deleted stub's inode number is not taken for it.
type stubValue struct {
	Gen uint32
	_   uint32
}

// AddStub registers the open file fd as a stub: from now on a process
// (other than an exempt one) that asks where its data is and would be told
// "hole" is killed. The daemon calls it after the file carries its fanotify
// mark and before it punches the data out; adding a stub twice is harmless
// (the generation is refreshed). fd is any open of the file but O_PATH
// (FS_IOC_GETVERSION, which reads the generation, needs a real open).
func (g *Guard) AddStub(fd int) error {
	k, gen, err := stubOf(fd)
	if err != nil {
		return err
	}
	if err := g.coll.Maps[guardMapSgStubs].Put(k, stubValue{Gen: gen}); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("%w: %w", ErrTableFull, err)
		}
		return fmt.Errorf("kernelguard: add stub: %w", err)
	}
	return nil
}

// RemoveStub unregisters the open file fd, once the stub is whole again
// (every byte filled and the fanotify mark removed). A file that is not
// registered is not an error.
func (g *Guard) RemoveStub(fd int) error {
	k, _, err := stubOf(fd)
	if err != nil {
		return err
	}
	return g.forget(k)
}

// ForgetStub unregisters a stub that cannot be opened any more (deleted, or
// replaced by another file), by the st_dev and st_ino the daemon recorded.
// A stub that is not registered is not an error.
func (g *Guard) ForgetStub(dev, ino uint64) error {
	return g.forget(stubKey{Dev: kernelDev(dev), Ino: ino})
}

func (g *Guard) forget(k stubKey) error {
	err := g.coll.Maps[guardMapSgStubs].Delete(k)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("kernelguard: remove stub: %w", err)
	}
	return nil
}

// stubOf returns the table key of fd and its inode generation.
func stubOf(fd int) (stubKey, uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return stubKey{}, 0, fmt.Errorf("kernelguard: fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return stubKey{}, 0, fmt.Errorf("%w: mode %#o", ErrNotRegular, st.Mode)
	}
	gen, err := unix.IoctlGetUint32(fd, fsIocGetversion)
	if err != nil {
		return stubKey{}, 0, fmt.Errorf("kernelguard: FS_IOC_GETVERSION: %w", err)
	}
	return stubKey{Dev: kernelDev(st.Dev), Ino: st.Ino}, gen, nil
}
