// SPDX-License-Identifier: GPL-2.0
/*
 * Test probe: reports, through the BTF-typed raw tracepoints the guard uses,
 * what the kernel does for one inode chosen by the test: each iomap_iter
 * call (its flags and caller), each mapping handed to the iterator (type,
 * and the iterator's flags reached the way the guard reaches them), and each
 * buffered read (the inode's fsnotify masks, the reader's start time).
 * Built by go generate (see facts_test.go).
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

volatile const __u64 target_ino = 0;
volatile const __u32 target_dev = 0;

enum { F_ITER = 1, F_DSTMAP = 2, F_READ = 3 };

struct fact {
	__u32 kind;
	__u32 flags;   /* iomap_iter flags */
	__u64 caller;  /* F_ITER: iomap_iter's caller (a kernel text address) */
	__s64 offset;  /* F_DSTMAP: mapping; F_ITER: iter->pos; F_READ: first page index */
	__u64 length;
	__u32 type;    /* F_DSTMAP: iomap type */
	__u32 tgid;
	__u32 i_fsnotify_mask;
	__u32 s_fsnotify_mask;
	__u64 start_ticks; /* the guard's exemption clock */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} facts SEC(".maps");

static bool target(struct inode *inode)
{
	return inode->i_ino == target_ino && inode->i_sb->s_dev == target_dev;
}

static struct fact *fact(__u32 kind, struct inode *inode)
{
	struct fact *f = bpf_ringbuf_reserve(&facts, sizeof(*f), 0);
	struct task_struct *t = bpf_get_current_task_btf();

	if (!f)
		return 0;
	__builtin_memset(f, 0, sizeof(*f));
	f->kind = kind;
	f->tgid = t->tgid;
	f->start_ticks = t->group_leader->start_boottime / NSEC_PER_TICK;
	f->i_fsnotify_mask = inode->i_fsnotify_mask;
	f->s_fsnotify_mask = inode->i_sb->s_fsnotify_mask;
	return f;
}

SEC("tp_btf/iomap_iter")
int BPF_PROG(fact_iter, struct iomap_iter *iter, const void *ops, unsigned long caller)
{
	struct inode *inode = iter->inode;
	struct fact *f;

	if (!inode || !target(inode))
		return 0;
	f = fact(F_ITER, inode);
	if (!f)
		return 0;
	f->flags = iter->flags;
	f->caller = caller;
	f->offset = iter->pos;
	f->length = iter->len;
	bpf_ringbuf_submit(f, 0);
	return 0;
}

SEC("tp_btf/iomap_iter_dstmap")
int BPF_PROG(fact_dstmap, struct inode *inode, struct iomap *iomap)
{
	struct iomap_iter *iter;
	struct fact *f;

	if (!inode || !target(inode))
		return 0;
	f = fact(F_DSTMAP, inode);
	if (!f)
		return 0;
	iter = (void *)iomap - bpf_core_field_offset(struct iomap_iter, iomap);
	f->flags = BPF_CORE_READ(iter, flags);
	f->type = iomap->type;
	f->offset = iomap->offset;
	f->length = iomap->length;
	bpf_ringbuf_submit(f, 0);
	return 0;
}

SEC("tp_btf/mm_filemap_get_pages")
int BPF_PROG(fact_read, struct address_space *mapping, unsigned long index, unsigned long last)
{
	struct inode *inode = mapping->host;
	struct fact *f;

	if (!inode || !target(inode))
		return 0;
	f = fact(F_READ, inode);
	if (!f)
		return 0;
	f->offset = index;
	f->length = last - index + 1;
	bpf_ringbuf_submit(f, 0);
	return 0;
}
