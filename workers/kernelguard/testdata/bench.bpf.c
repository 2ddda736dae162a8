// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmark programs. rk_read is an experiment, not part of the guard
 * (README.md, "Readers of unguarded stubs"): kill a process that reads a
 * registered stub which no fanotify pre-content mark guards (the daemon
 * and its holder are gone), from tp_btf/mm_filemap_get_pages, which fires
 * in every buffered read after the page cache holds the pages and before
 * they are copied to the reader. rk_empty and dm_empty attach to
 * mm_filemap_get_pages and to the guard's iomap_iter_dstmap doing nothing,
 * to separate the cost of a tracepoint program from the cost of what it
 * does. Built by go generate (see bench_test.go).
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct stub_key {
	__u32 dev;
	__u32 pad;
	__u64 ino;
};

struct stub_value {
	__u32 gen;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20);
	__type(key, struct stub_key);
	__type(value, struct stub_value);
} rk_stubs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rk_kills SEC(".maps");

SEC("tp_btf/mm_filemap_get_pages")
int BPF_PROG(rk_read, struct address_space *mapping, unsigned long index, unsigned long last)
{
	struct inode *inode = mapping->host;
	struct stub_key k = {
		.dev = inode->i_sb->s_dev,
		.ino = inode->i_ino,
	};
	struct stub_value *v = bpf_map_lookup_elem(&rk_stubs, &k);
	__u32 zero = 0;
	__u64 *n;

	if (!v || v->gen != inode->i_generation)
		return 0;
	/* A live mark: the daemon filled the range before this read. */
	if ((inode->i_fsnotify_mask | inode->i_sb->s_fsnotify_mask) & FS_PRE_ACCESS)
		return 0;
	if (bpf_send_signal(SIGKILL) == 0) {
		n = bpf_map_lookup_elem(&rk_kills, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
	}
	return 0;
}

SEC("tp_btf/mm_filemap_get_pages")
int BPF_PROG(rk_empty, struct address_space *mapping, unsigned long index, unsigned long last)
{
	return 0;
}

SEC("tp_btf/iomap_iter_dstmap")
int BPF_PROG(dm_empty, struct inode *inode, void *iomap)
{
	return 0;
}

/* Hits of each tracepoint by one process (the benchmark's), which the
 * system-wide BPF run counts cannot tell apart from other load. */
volatile const __u32 target_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

static __always_inline void hit(__u32 i)
{
	__u64 *n;

	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return;
	n = bpf_map_lookup_elem(&hits, &i);
	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("tp_btf/iomap_iter_dstmap")
int BPF_PROG(dm_count, struct inode *inode, void *iomap)
{
	hit(0);
	return 0;
}

SEC("tp_btf/mm_filemap_get_pages")
int BPF_PROG(rk_count, struct address_space *mapping, unsigned long index, unsigned long last)
{
	hit(1);
	return 0;
}
