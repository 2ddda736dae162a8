/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel types and fields the Strata kernel guard reads, written by
 * hand instead of a generated vmlinux.h. Every record carries
 * preserve_access_index, so each field access is a CO-RE relocation that the
 * loader resolves against the running kernel's BTF: the layouts below are
 * never used, only the names and types.
 */
#ifndef STRATA_KERNEL_H
#define STRATA_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

/* uapi/linux/bpf.h values used here (stable ABI). */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum { BPF_ANY = 0 };
#define BPF_F_NO_PREALLOC 1

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct super_block {
	unsigned int s_dev;
	__u32 s_fsnotify_mask;
};

struct inode {
	struct super_block *i_sb;
	unsigned long i_ino;
	long long i_size;
	__u32 i_generation;
	__u32 i_fsnotify_mask;
};

struct address_space {
	struct inode *host;
};

/* include/linux/iomap.h */
struct iomap {
	long long offset;
	__u64 length;
	__u16 type;
};

struct iomap_iter {
	struct inode *inode;
	long long pos;
	__u64 len;
	unsigned int flags;
	struct iomap iomap;
};

struct signal_struct {
	unsigned int flags;
};

struct task_struct {
	int pid;
	int tgid;
	unsigned int flags;
	__u64 start_boottime;
	struct task_struct *group_leader;
	struct signal_struct *signal;
	char comm[16];
};

/* x86_64's struct pt_regs, as a CO-RE flavor: on other architectures the
 * fields do not exist and bpf_core_field_exists() is false. */
struct pt_regs___x86 {
	unsigned long orig_ax;
	unsigned long si;
	unsigned long dx;
};

#pragma clang attribute pop

struct pt_regs;

/* include/linux/iomap.h: mapping types and iterator flags (6.18; the flag
 * value is checked on the running kernel by TestKernelFacts). */
#define IOMAP_HOLE 0
#define IOMAP_DELALLOC 1
#define IOMAP_MAPPED 2
#define IOMAP_UNWRITTEN 3
#define IOMAP_INLINE 4
#define IOMAP_REPORT (1U << 2)

/* include/linux/sched.h, include/linux/sched/signal.h */
#define PF_KTHREAD 0x00200000
#define SIGNAL_GROUP_EXIT 0x00000004

/* include/linux/fsnotify_backend.h */
#define FS_PRE_ACCESS 0x00100000

#define SIGKILL 9

/* /proc/PID/stat starttime is in USER_HZ (100) ticks. */
#define NSEC_PER_TICK 10000000ULL

#endif
