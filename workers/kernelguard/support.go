//go:build linux

package kernelguard

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Why the guard cannot run; Supported and Load wrap one of these.
var (
	ErrNotRoot   = errors.New("kernelguard: needs root (CAP_SYS_ADMIN and CAP_BPF)")
	ErrNoBPFLSM  = errors.New("kernelguard: the BPF LSM is not active (bpf missing from /sys/kernel/security/lsm; add it to lsm= on the kernel command line)")
	ErrNoBTF     = errors.New("kernelguard: the kernel has no BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)")
	ErrNoKfunc   = errors.New("kernelguard: the kernel lacks what the guard attaches to or calls (bpf_get_file_xattr needs Linux >= 6.13, FAN_PRE_ACCESS 6.14)")
	ErrNoBPFFS   = errors.New("kernelguard: no bpffs to pin the guard in")
	ErrNoTramp   = errors.New("kernelguard: the kernel refuses BPF trampoline programs (LSM, fentry, fexit), which the guard is made of")
	ErrBadConfig = errors.New("kernelguard: invalid configuration")
	ErrNotLoaded = errors.New("kernelguard: no guard is pinned there")
)

// kernelSymbols are BTF functions the guard needs: hooks it attaches to and
// the kfunc it calls.
var kernelSymbols = []string{
	"bpf_get_file_xattr",
	"bpf_lsm_file_open", "bpf_lsm_file_permission", "bpf_lsm_mmap_file", "bpf_lsm_path_truncate",
	"bpf_lsm_file_ioctl", "bpf_lsm_file_ioctl_compat",
	"bpf_lsm_inode_setxattr", "bpf_lsm_inode_removexattr",
	"bpf_lsm_inode_post_setxattr", "bpf_lsm_inode_post_removexattr",
	"vfs_llseek", "fanotify_handle_event",
}

// Supported reports why the guard cannot be loaded on this machine, or nil.
// It mounts securityfs if it is not mounted, and loads (never attaches) a
// two-instruction LSM program to learn whether the kernel accepts BPF
// trampolines at all.
func Supported() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	lsm, err := activeLSMs()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoBPFLSM, err)
	}
	if !strings.Contains(","+lsm+",", ",bpf,") {
		return fmt.Errorf("%w (active: %s)", ErrNoBPFLSM, lsm)
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoBTF, err)
	}
	for _, name := range kernelSymbols {
		var fn *btf.Func
		if err := spec.TypeByName(name, &fn); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrNoKfunc, name, err)
		}
	}
	if err := bpffsAvailable(); err != nil {
		return err
	}
	return probeTrampoline()
}

func activeLSMs() (string, error) {
	const path = "/sys/kernel/security/lsm"
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := unix.Mount("securityfs", "/sys/kernel/security", "securityfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return "", fmt.Errorf("mount securityfs: %w", err)
		}
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(b)), nil
}

func bpffsAvailable() error {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoBPFFS, err)
	}
	if !bytes.Contains(b, []byte("\tbpf\n")) {
		return fmt.Errorf("%w: bpf is not in /proc/filesystems", ErrNoBPFFS)
	}
	return nil
}

// probeTrampoline loads a program that returns 0 for lsm/file_open. Loading
// already asks the kernel for a trampoline target; some kernels (this
// project's CI machines among them: a locked-down Linux 6.18 without
// kprobes, whose ftrace refuses root) answer EPERM before the verifier runs.
func probeTrampoline() error {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "sg_probe",
		Type:         ebpf.LSM,
		AttachType:   ebpf.AttachLSMMac,
		AttachTo:     "file_open",
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("%w: loading a 2-instruction lsm/file_open program: %w", ErrNoTramp, err)
	}
	return p.Close()
}

// ensureBPFFS mounts bpffs on /sys/fs/bpf when dir lies under it and it is
// not mounted yet.
func ensureBPFFS(dir string) error {
	const root = "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if !strings.HasPrefix(dir+"/", root+"/") {
		return fmt.Errorf("%w: %s is not on a mounted bpffs", ErrNoBPFFS, dir)
	}
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("%w: mount -t bpf bpf %s: %w", ErrNoBPFFS, root, err)
	}
	return nil
}
