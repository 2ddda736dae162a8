// SPDX-License-Identifier: GPL-2.0
/*
 * Test probe: reports, through raw (BTF) tracepoints that this kernel lets
 * root attach, the struct file and inode fields the guard's decisions rest
 * on, for one inode chosen by the test. Built with:
 *   clang -O2 -g -target bpfel -I../bpf -c facts.bpf.c -o facts_bpfel.o
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sparse.h"

char LICENSE[] SEC("license") = "GPL";

volatile const __u64 target_ino = 0;
volatile const __u32 target_dev = 0;

struct fact {
	__u32 kind; /* 1 flock (has a file), 2 buffered read (inode only) */
	__u32 f_mode;
	__u64 i_blocks;
	__s64 i_size;
	__u32 i_fsnotify_mask;
	__u32 s_fsnotify_mask;
	__u64 allocated;
	__u32 tgid;
	__u32 pad;
	__u64 start_ticks; /* the guard's exemption clock */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} facts SEC(".maps");

static bool target(struct inode *inode)
{
	return inode->i_ino == target_ino && inode->i_sb->s_dev == target_dev;
}

static void emit(__u32 kind, struct file *file, struct inode *inode)
{
	struct fact *f = bpf_ringbuf_reserve(&facts, sizeof(*f), 0);

	if (!f)
		return;
	f->kind = kind;
	f->f_mode = file ? file->f_mode : 0;
	f->i_blocks = inode->i_blocks;
	f->i_size = inode->i_size;
	f->i_fsnotify_mask = inode->i_fsnotify_mask;
	f->s_fsnotify_mask = inode->i_sb->s_fsnotify_mask;
	f->allocated = allocated_bytes(inode);
	struct task_struct *t = bpf_get_current_task_btf();
	f->tgid = t->tgid;
	f->start_ticks = t->group_leader->start_boottime / 10000000ULL;
	bpf_ringbuf_submit(f, 0);
}

SEC("tp_btf/flock_lock_inode")
int BPF_PROG(fact_flock, struct inode *inode, struct file_lock *fl, int ret)
{
	struct file *file;

	if (!fl || !inode)
		return 0;
	file = fl->c.flc_file;

	if (file && target(inode))
		emit(1, file, inode);
	return 0;
}

SEC("tp_btf/mm_filemap_get_pages")
int BPF_PROG(fact_read, struct address_space *mapping, unsigned long index, unsigned long last)
{
	struct inode *inode = mapping->host;

	if (inode && target(inode))
		emit(2, 0, inode);
	return 0;
}
