/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel types and fields the Strata kernel guard reads, written by
 * hand instead of a generated vmlinux.h. Every record carries
 * preserve_access_index, so each field access is a CO-RE relocation that the
 * loader resolves against the running kernel's BTF: the offsets below are
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
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
	BPF_MAP_TYPE_INODE_STORAGE = 28,
};
enum { BPF_ANY = 0 };
#define BPF_F_NO_PREALLOC 1
#define BPF_LOCAL_STORAGE_GET_F_CREATE 1

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct super_block {
	unsigned int s_dev;
	unsigned char s_blocksize_bits;
	unsigned long s_magic;
	__u32 s_fsnotify_mask;
};

struct inode {
	unsigned short i_mode;
	struct super_block *i_sb;
	unsigned long i_ino;
	long long i_size;
	__u32 i_generation;
	unsigned long long i_blocks;
	__u32 i_fsnotify_mask;
};

struct dentry {
	struct inode *d_inode;
};

struct path {
	void *mnt;
	struct dentry *dentry;
};

struct file {
	unsigned int f_mode;
	struct inode *f_inode;
	struct path f_path;
};

struct fsnotify_group {
	bool shutdown;
};

struct file_range {
	const struct path *path;
	long long pos;
	unsigned long count;
};

struct task_struct {
	int pid;
	int tgid;
	unsigned int flags;
	__u64 start_boottime;
	struct task_struct *group_leader;
	char comm[16];
};

struct file_lock_core {
	struct file *flc_file;
};

struct file_lock {
	struct file_lock_core c;
};

/* fs/xfs/xfs_inode.h: XFS keeps its block counts here, not in i_blocks. */
struct xfs_inode {
	__u64 i_delayed_blks;
	__u64 i_nblocks;
	struct inode i_vnode;
};

/* fs/ext4/ext4.h: delayed-allocation blocks are not in i_blocks yet. */
struct ext4_inode_info {
	unsigned int i_reserved_data_blocks;
	struct inode vfs_inode;
};

struct address_space {
	struct inode *host;
};

#pragma clang attribute pop

struct bpf_dynptr {
	__u64 __opaque[2];
} __attribute__((aligned(8)));

/* include/linux/stat.h */
#define S_IFMT 00170000
#define S_IFREG 0100000
#define S_ISREG(m) (((m) & S_IFMT) == S_IFREG)

#define XFS_SUPER_MAGIC 0x58465342
#define EXT4_SUPER_MAGIC 0xEF53

/* include/linux/sched.h */
#define PF_KTHREAD 0x00200000

#endif
