//go:build linux

package kernelguard

// The BPF objects are generated and committed, so a plain go build needs no
// clang. To regenerate (Debian: apt-get install clang llvm libbpf-dev):
//
//	go generate ./workers/kernelguard/
//
// bpf/kernel.h is hand-written (CO-RE, preserve_access_index): no vmlinux.h
// is needed or committed.

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall" -target bpfel,bpfeb -no-global-types guard bpf/guard.bpf.c -- -I bpf
