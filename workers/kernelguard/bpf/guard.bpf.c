// SPDX-License-Identifier: GPL-2.0
/*
 * Strata kernel guard: kills a process that asks the kernel where the data
 * of a Strata stub is (lseek SEEK_DATA/SEEK_HOLE, FIEMAP, FIBMAP) and is
 * about to be told "hole", before it returns to user space and copies the
 * "hole" as zeros. See ../README.md for what it covers and why it kills.
 *
 * It needs no BPF trampoline: one BTF-typed raw tracepoint, iomap_iter_dstmap,
 * which fires each time a filesystem hands the iomap iterator a mapping.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* Keep in sync with status.go (Counters). */
enum counter {
	C_PROBES_KILLED,   /* probers sent SIGKILL */
	C_PROBES_LOGGED,   /* probes recorded only (Config.Action "log") */
	C_EXEMPT,          /* probes by exempt Strata processes */
	C_STALE,           /* a stub entry whose inode number was reused */
	C_KERNEL_THREADS,  /* probes by kernel threads (nfsd, ksmbd): cannot be killed */
	C_SIGNAL_FAILED,   /* bpf_send_signal failed */
	C_RECORDS_DROPPED, /* ring buffer full */
	C_MAX,
};

/* Record kinds. Keep in sync with guard.go (Kind). */
enum kind {
	K_PROBE = 1,
};

struct settings {
	__u32 kill; /* 1: SIGKILL the prober; 0: record only */
	__u32 pad;
};

/* A stub: the kernel's (sb->s_dev, i_ino). The value holds i_generation, so
 * that a new file which reuses the inode number is not taken for the stub. */
struct stub_key {
	__u32 dev;
	__u32 pad;
	__u64 ino;
};

struct stub_value {
	__u32 gen;
	__u32 pad;
};

struct record {
	__u64 ino;
	__s64 offset;  /* start of the hole the kernel was reporting */
	__u64 length;  /* its length */
	__s64 syscall; /* x86_64 syscall number of the prober, -1 if unknown */
	__u64 arg;     /* lseek whence, or ioctl cmd */
	__u32 dev;     /* kernel s_dev */
	__u32 pid;
	__u32 tgid;
	__u32 iomap_flags;
	__u16 iomap_type;
	__u16 kind;
	__u32 action;     /* SIGKILL (9) sent, or 0 */
	__s32 signal_err; /* bpf_send_signal's result when it failed */
	__u32 pad;
	char comm[16];
};

/* The Go side decodes these; TestObject checks the same numbers there. */
_Static_assert(sizeof(struct record) == 88, "struct record changed: update rawRecord in guard.go");
_Static_assert(sizeof(struct settings) == 8, "struct settings changed: update settings in config.go");
_Static_assert(sizeof(struct stub_key) == 16, "struct stub_key changed: update stubKey in stubs.go");
_Static_assert(C_MAX == 7, "counters changed: update Counters in status.go");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20); /* Config.MaxStubs when the map is created */
	__type(key, struct stub_key);
	__type(value, struct stub_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_stubs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);   /* tgid */
	__type(value, __u64); /* its start time in clock ticks since boot */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_exempt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_records SEC(".maps");

static __always_inline void count(enum counter c)
{
	__u32 k = c;
	__u64 *v = bpf_map_lookup_elem(&sg_counters, &k);

	if (v)
		*v += 1;
}

/* exempt: the current process is registered with its own start time (a
 * process that reuses the pid is not). */
static __always_inline bool exempt(struct task_struct *t)
{
	__u32 tgid = t->tgid;
	__u64 *start = bpf_map_lookup_elem(&sg_exempt, &tgid);

	return start && *start == t->group_leader->start_boottime / NSEC_PER_TICK;
}

/* registered_stub: the inode is in sg_stubs with its generation. */
static __always_inline bool registered_stub(struct inode *inode)
{
	struct stub_key k = {
		.dev = inode->i_sb->s_dev,
		.ino = inode->i_ino,
	};
	struct stub_value *v = bpf_map_lookup_elem(&sg_stubs, &k);

	if (!v)
		return false;
	if (v->gen != inode->i_generation) {
		count(C_STALE);
		return false;
	}
	return true;
}

static __always_inline void record(struct task_struct *t, struct inode *inode, const struct iomap *iomap,
				   __u32 flags, __u32 action, long err)
{
	struct record *r = bpf_ringbuf_reserve(&sg_records, sizeof(*r), 0);

	if (!r) {
		count(C_RECORDS_DROPPED);
		return;
	}
	r->ino = inode->i_ino;
	r->dev = inode->i_sb->s_dev;
	r->offset = iomap->offset;
	r->length = iomap->length;
	r->iomap_type = iomap->type;
	r->iomap_flags = flags;
	r->kind = K_PROBE;
	r->pid = t->pid;
	r->tgid = t->tgid;
	r->action = action;
	r->signal_err = err;
	r->pad = 0;
	r->syscall = -1;
	r->arg = 0;
	if (bpf_core_field_exists(struct pt_regs___x86, orig_ax) && !(t->flags & PF_KTHREAD)) {
		struct pt_regs___x86 *regs = (void *)bpf_task_pt_regs(t);
		long nr = BPF_CORE_READ(regs, orig_ax);

		r->syscall = nr;
		r->arg = nr == 8 /* lseek */ ? BPF_CORE_READ(regs, dx) : BPF_CORE_READ(regs, si);
	}
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	bpf_ringbuf_submit(r, 0);
}

/*
 * iomap_iter_dstmap fires once per mapping the filesystem returns to the
 * iomap iterator: buffered writes and (XFS) uncached reads, direct I/O, DAX,
 * page-fault writes, zeroing, and the IOMAP_REPORT queries — SEEK_DATA and
 * SEEK_HOLE (iomap_seek_data/_hole), FIEMAP (iomap_fiemap), FIBMAP
 * (iomap_bmap) and swapfile activation. Only a report of a hole (or an
 * unwritten extent, which also reads as zeros) inside a registered stub
 * matters; everything else returns after the first compare.
 */
SEC("tp_btf/iomap_iter_dstmap")
int BPF_PROG(sg_probe, struct inode *inode, struct iomap *iomap)
{
	__u16 type = iomap->type;
	struct iomap_iter *iter;
	struct task_struct *t;
	__u32 flags, kill;
	struct settings *s;
	__u32 zero = 0;
	long err;

	if (type != IOMAP_HOLE && type != IOMAP_UNWRITTEN)
		return 0;
	/* The tracepoint's iomap is &iter->iomap (fs/iomap/iter.c,
	 * iomap_iter_done); the iterator's flags say what the mapping is for. */
	iter = (void *)iomap - bpf_core_field_offset(struct iomap_iter, iomap);
	flags = BPF_CORE_READ(iter, flags);
	if (!(flags & IOMAP_REPORT))
		return 0;
	/* A hole at or past EOF hides no data (FIEMAP maps past EOF). */
	if (iomap->offset >= inode->i_size)
		return 0;
	if (!registered_stub(inode))
		return 0;

	t = bpf_get_current_task_btf();
	if (exempt(t)) {
		count(C_EXEMPT);
		return 0;
	}
	/* Already killed, for an earlier hole of the same call. */
	if (t->signal->flags & SIGNAL_GROUP_EXIT)
		return 0;
	if (t->flags & PF_KTHREAD) {
		count(C_KERNEL_THREADS);
		record(t, inode, iomap, flags, 0, 0);
		return 0;
	}
	s = bpf_map_lookup_elem(&sg_settings, &zero);
	kill = s ? s->kill : 1;
	if (!kill) {
		count(C_PROBES_LOGGED);
		record(t, inode, iomap, flags, 0, 0);
		return 0;
	}
	/* Delivered when the task returns to user space: it never sees the
	 * answer of this lseek or ioctl. */
	err = bpf_send_signal(SIGKILL);
	if (err) {
		count(C_SIGNAL_FAILED);
		record(t, inode, iomap, flags, 0, err);
		return 0;
	}
	count(C_PROBES_KILLED);
	record(t, inode, iomap, flags, SIGKILL, 0);
	return 0;
}
