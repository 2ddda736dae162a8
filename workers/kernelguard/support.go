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

// Why the guard cannot run, and other errors Load and the Guard methods
// wrap.
var (
	ErrNotRoot      = errors.New("kernelguard: needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)")
	ErrNoBTF        = errors.New("kernelguard: the kernel has no BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)")
	ErrNoTracepoint = errors.New("kernelguard: the kernel has no iomap_iter_dstmap tracepoint with the iomap_iter layout the guard reads (needs Linux >= 5.15 and CONFIG_FS_IOMAP)")
	ErrNoProgType   = errors.New("kernelguard: the kernel refuses a BTF raw tracepoint program that calls bpf_send_signal")
	ErrNoBPFFS      = errors.New("kernelguard: no bpffs to pin the guard in")
	ErrBadConfig    = errors.New("kernelguard: invalid configuration")
	ErrNotLoaded    = errors.New("kernelguard: no guard is pinned there")
	ErrNotRegular   = errors.New("kernelguard: not a regular file")
	ErrTableFull    = errors.New("kernelguard: the stub table is full (Config.MaxStubs)")
)

// Supported reports why the guard cannot be loaded on this machine, or nil.
// It checks the kernel's BTF for the tracepoint and the fields the guard
// reads, and loads (never attaches) a four-instruction program of the
// guard's type that calls bpf_send_signal, so a kernel that refuses either
// says so here.
func Supported() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoBTF, err)
	}
	var tp *btf.Typedef
	if err := spec.TypeByName("btf_trace_iomap_iter_dstmap", &tp); err != nil {
		return fmt.Errorf("%w: %w", ErrNoTracepoint, err)
	}
	var it *btf.Struct
	if err := spec.TypeByName("iomap_iter", &it); err != nil {
		return fmt.Errorf("%w: %w", ErrNoTracepoint, err)
	}
	for _, field := range []string{"flags", "iomap"} {
		if !hasMember(it, field) {
			return fmt.Errorf("%w: struct iomap_iter has no %s", ErrNoTracepoint, field)
		}
	}
	if err := bpffsAvailable(); err != nil {
		return err
	}
	return probeProgram()
}

func hasMember(s *btf.Struct, name string) bool {
	for _, m := range s.Members {
		if m.Name == name {
			return true
		}
	}
	return false
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

// probeProgram loads `bpf_send_signal(0); return 0` as tp_btf/iomap_iter_dstmap.
func probeProgram() error {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "sg_supported",
		Type:       ebpf.Tracing,
		AttachType: ebpf.AttachTraceRawTp,
		AttachTo:   "iomap_iter_dstmap",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, 0),
			asm.FnSendSignal.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoProgType, err)
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
