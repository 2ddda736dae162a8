// SPDX-License-Identifier: GPL-2.0
/*
 * Strata kernel guard: makes the kernel fail closed on Strata stubs that no
 * live fanotify pre-content mark guards, and refuses (or punishes) hole
 * probes on stubs. See ../README.md for what each program covers.
 *
 * A stub is a regular file that carries the xattr security.bpf.strata. The
 * verdict (stub or not) is cached per inode in BPF inode storage, and stub
 * identities are also kept in an LRU hash for the tracing programs, which
 * cannot use inode storage.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sparse.h"

char LICENSE[] SEC("license") = "GPL";

extern int bpf_get_file_xattr(struct file *file, const char *name__str, struct bpf_dynptr *value_p) __ksym;

#define MARKER "security.bpf.strata"
#define MARKER_LEN 19

#define EIO 5
#define EPERM 1
#define EOPNOTSUPP 95
#define ENODATA 61
#define ERANGE 34
#define SIGKILL 9

/* include/linux/fs.h (6.14+) */
#define FMODE_NONOTIFY (1U << 25)
#define FMODE_NONOTIFY_PERM (1U << 26)
#define FMODE_FSNOTIFY_MASK (FMODE_NONOTIFY | FMODE_NONOTIFY_PERM)

/* include/linux/fsnotify_backend.h */
#define FS_OPEN_PERM 0x00010000
#define FS_ACCESS_PERM 0x00020000
#define FS_OPEN_EXEC_PERM 0x00040000
#define FS_PRE_ACCESS 0x00100000
#define FS_PERM_EVENTS (FS_OPEN_PERM | FS_ACCESS_PERM | FS_OPEN_EXEC_PERM | FS_PRE_ACCESS)

/* fsnotify data types (enum fsnotify_data_type) */
#define FSNOTIFY_EVENT_FILE_RANGE 1
#define FSNOTIFY_EVENT_PATH 2
#define FSNOTIFY_EVENT_INODE 3

/* Extent-map ioctls. */
#define FIBMAP 1
#define FS_IOC_FIEMAP 0xC020660B
#define XFS_IOC_GETBMAP 0xC0205826
#define XFS_IOC_GETBMAPA 0xC020582C
#define XFS_IOC_GETBMAPX 0xC0305838
#define EXT4_IOC_GET_ES_CACHE 0xC020662A

#define SEEK_DATA 3
#define SEEK_HOLE 4

#define NSEC_PER_TICK 10000000ULL /* /proc/PID/stat starttime: USER_HZ=100 */

enum verdict { V_UNKNOWN = 0, V_STUB = 1, V_RESIDENT = 2 };

/* Keep in sync with guard.go. */
enum counter {
	C_DENIED_OPEN,
	C_DENIED_RW,
	C_DENIED_MMAP,
	C_DENIED_TRUNCATE,
	C_REFUSED_EXTENT_MAP,
	C_PROBES_KILLED,
	C_PROBES_LOGGED,
	C_RELEASED_KILLED,
	C_MARKER_REFUSED,
	C_XATTR_ERRORS,
	C_EXEMPT_ALLOWED,
	C_GUARDED_OPENS,
	C_EVENTS_DROPPED,
	C_MAX,
};

/* Record kinds. Keep in sync with guard.go. */
enum kind {
	K_DENIED_OPEN = 1,
	K_DENIED_RW,
	K_DENIED_MMAP,
	K_DENIED_TRUNCATE,
	K_REFUSED_EXTENT_MAP,
	K_PROBE,
	K_RELEASED,
	K_MARKER_REFUSED,
};

struct settings {
	__s32 neg_errno;       /* returned for a denied access: -EIO, ... */
	__u32 probe_kill;      /* 1: SIGKILL a hole prober; 0: log only */
	__u32 protect_marker;  /* 1: only exempt processes change the marker */
	__u32 kill_released;   /* 1: SIGKILL a reader let through by a dying group */
};

struct stub_key {
	__u64 ino;
	__u32 dev;
	__u32 gen;
};

struct record {
	__u64 ino;
	__s64 offset;
	__u32 dev;
	__u32 kind;
	__u32 pid;
	__u32 tgid;
	__s32 arg;    /* whence, ioctl cmd, fsnotify mask or access mask */
	__u32 action; /* errno returned, or SIGKILL (9), or 0 logged */
	char comm[16];
};

/* The Go side (guard.go, status.go) decodes these; TestObject checks the
 * same numbers there. */
_Static_assert(sizeof(struct record) == 56, "struct record layout changed: update rawRecord in guard.go");
_Static_assert(sizeof(struct settings) == 16, "struct settings layout changed: update settings in config.go");
_Static_assert(C_MAX == 13, "counters changed: update Counters in status.go");
_Static_assert(K_MARKER_REFUSED == 8, "record kinds changed: update Kind in guard.go");

struct verdict_value {
	__u8 v;
};

struct {
	__uint(type, BPF_MAP_TYPE_INODE_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct verdict_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stub_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_stubs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);   /* tgid */
	__type(value, __u64); /* start time in clock ticks since boot */
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
	__u64 *v = bpf_map_lookup_elem(&sg_counters, &c);

	if (v)
		*v += 1;
}

static __always_inline struct settings *settings(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sg_settings, &zero);
}

/* deny_errno is stored negative, and bounded by signed compares, so the
 * verifier can prove an LSM program returns a value in [-4095, 0]. */
static __always_inline int deny_errno(void)
{
	struct settings *s = settings();
	int e = s ? s->neg_errno : -EIO;

	if (e < -4095 || e > -1)
		e = -EIO;
	return e;
}

/* exempt: the current process is registered, with its own start time (a
 * reused pid is not). */
static __always_inline bool exempt(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 tgid = t->tgid;
	__u64 *start = bpf_map_lookup_elem(&sg_exempt, &tgid);

	if (!start)
		return false;
	return *start == t->group_leader->start_boottime / NSEC_PER_TICK;
}

static __always_inline void key_of(struct inode *inode, struct stub_key *k)
{
	k->ino = inode->i_ino;
	k->dev = inode->i_sb->s_dev;
	k->gen = inode->i_generation;
}

static __always_inline void remember_stub(struct inode *inode)
{
	struct stub_key k = {};
	__u8 one = 1;

	key_of(inode, &k);
	bpf_map_update_elem(&sg_stubs, &k, &one, BPF_ANY);
}

static __always_inline void forget_stub(struct inode *inode)
{
	struct stub_key k = {};

	key_of(inode, &k);
	bpf_map_delete_elem(&sg_stubs, &k);
}

static __always_inline bool known_stub(struct inode *inode)
{
	struct stub_key k = {};

	key_of(inode, &k);
	return bpf_map_lookup_elem(&sg_stubs, &k) != 0;
}

static __always_inline void record_key(enum kind kind, __u64 ino, __u32 dev, __s32 arg, __s64 offset, __u32 action)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct record r = {};

	r.ino = ino;
	r.dev = dev;
	r.offset = offset;
	r.kind = kind;
	r.pid = t->pid;
	r.tgid = t->tgid;
	r.arg = arg;
	r.action = action;
	bpf_get_current_comm(r.comm, sizeof(r.comm));
	if (bpf_ringbuf_output(&sg_records, &r, sizeof(r), 0))
		count(C_EVENTS_DROPPED);
}

static __always_inline void record(enum kind kind, struct inode *inode, __s32 arg, __s64 offset, __u32 action)
{
	record_key(kind, inode->i_ino, inode->i_sb->s_dev, arg, offset, action);
}

/* guarded_open: a live permission or pre-content mark covers the inode. */
static __always_inline bool guarded_open(struct inode *inode)
{
	__u32 mask = inode->i_fsnotify_mask | inode->i_sb->s_fsnotify_mask;

	return mask & (FS_PRE_ACCESS | FS_OPEN_PERM);
}

/* guarded_rw: a live pre-content mark covers the inode. */
static __always_inline bool guarded_rw(struct inode *inode)
{
	__u32 mask = inode->i_fsnotify_mask | inode->i_sb->s_fsnotify_mask;

	return mask & FS_PRE_ACCESS;
}

/* read_verdict reads the marker (sleepable programs only). A sparse file
 * whose xattr cannot be read for another reason than "absent" or "not
 * supported" counts as a stub: fail closed. */
static __always_inline __u8 read_verdict(struct file *file)
{
	char buf[8] = {};
	struct bpf_dynptr dp;
	int ret;

	bpf_dynptr_from_mem(buf, sizeof(buf), 0, &dp);
	ret = bpf_get_file_xattr(file, MARKER, &dp);
	if (ret >= 0 || ret == -ERANGE)
		return V_STUB;
	if (ret == -ENODATA || ret == -EOPNOTSUPP)
		return V_RESIDENT;
	count(C_XATTR_ERRORS);
	return V_STUB;
}

/* verdict_of returns the cached verdict, or reads and caches it (sleepable
 * programs) when fill is set. Only regular files that look sparse get here. */
static __always_inline __u8 verdict_of(struct file *file, struct inode *inode, bool fill)
{
	struct verdict_value *vv = bpf_inode_storage_get(&sg_verdicts, inode, 0, 0);
	__u8 v;

	if (vv && vv->v != V_UNKNOWN)
		return vv->v;
	if (!fill)
		return V_UNKNOWN;
	v = read_verdict(file);
	vv = bpf_inode_storage_get(&sg_verdicts, inode, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (vv)
		vv->v = v;
	if (v == V_STUB)
		remember_stub(inode);
	return v;
}

SEC("lsm.s/file_open")
int BPF_PROG(sg_file_open, struct file *file)
{
	struct inode *inode = file->f_inode;

	if (!inode || !S_ISREG(inode->i_mode) || !looks_sparse(inode))
		return 0;
	if (verdict_of(file, inode, true) != V_STUB)
		return 0;
	remember_stub(inode); /* keeps the LRU entry fresh for lseek */
	if (guarded_open(inode)) {
		count(C_GUARDED_OPENS);
		return 0;
	}
	if (exempt()) {
		count(C_EXEMPT_ALLOWED);
		return 0;
	}
	count(C_DENIED_OPEN);
	int e = deny_errno();
	record(K_DENIED_OPEN, inode, 0, 0, -e);
	return e;
}

/* rw_check serves file_permission and mmap_file. The first test is one load
 * of f_mode: a file opened without pre-content events (exactly one of the
 * two FMODE_NONOTIFY bits: every file on a filesystem no HSM watches, and
 * fanotify's own fds) is never a guarded stub. */
static __always_inline int rw_check(struct file *file, enum kind kind, enum counter c, __s32 arg)
{
	__u32 m = file->f_mode & FMODE_FSNOTIFY_MASK;
	struct inode *inode;

	if (m == FMODE_NONOTIFY_PERM || m == FMODE_NONOTIFY)
		return 0;
	inode = file->f_inode;
	if (!inode || !S_ISREG(inode->i_mode))
		return 0;
	if (verdict_of(file, inode, false) != V_STUB)
		return 0;
	if (guarded_rw(inode) || exempt())
		return 0;
	count(c);
	int e = deny_errno();
	record(kind, inode, arg, 0, -e);
	return e;
}

SEC("lsm/file_permission")
int BPF_PROG(sg_file_permission, struct file *file, int mask)
{
	return rw_check(file, K_DENIED_RW, C_DENIED_RW, mask);
}

SEC("lsm/mmap_file")
int BPF_PROG(sg_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot, unsigned long flags)
{
	if (!file)
		return 0;
	return rw_check(file, K_DENIED_MMAP, C_DENIED_MMAP, (__s32)prot);
}

SEC("lsm/path_truncate")
int BPF_PROG(sg_path_truncate, const struct path *path)
{
	struct inode *inode = path->dentry->d_inode;

	if (!inode || !S_ISREG(inode->i_mode))
		return 0;
	if (!known_stub(inode) || guarded_rw(inode) || exempt())
		return 0;
	count(C_DENIED_TRUNCATE);
	int e = deny_errno();
	record(K_DENIED_TRUNCATE, inode, 0, 0, -e);
	return e;
}

static __always_inline bool extent_map_cmd(unsigned int cmd)
{
	return cmd == FS_IOC_FIEMAP || cmd == FIBMAP || cmd == XFS_IOC_GETBMAP ||
	       cmd == XFS_IOC_GETBMAPA || cmd == XFS_IOC_GETBMAPX || cmd == EXT4_IOC_GET_ES_CACHE;
}

static __always_inline int ioctl_check(struct file *file, unsigned int cmd, bool fill)
{
	struct inode *inode;

	if (!extent_map_cmd(cmd))
		return 0;
	inode = file->f_inode;
	if (!inode || !S_ISREG(inode->i_mode) || !looks_sparse(inode))
		return 0;
	if (verdict_of(file, inode, fill) != V_STUB || exempt())
		return 0;
	count(C_REFUSED_EXTENT_MAP);
	record(K_REFUSED_EXTENT_MAP, inode, (__s32)cmd, 0, EOPNOTSUPP);
	return -EOPNOTSUPP;
}

SEC("lsm.s/file_ioctl")
int BPF_PROG(sg_file_ioctl, struct file *file, unsigned int cmd, unsigned long arg)
{
	return ioctl_check(file, cmd, true);
}

SEC("lsm/file_ioctl_compat")
int BPF_PROG(sg_file_ioctl_compat, struct file *file, unsigned int cmd, unsigned long arg)
{
	return ioctl_check(file, cmd, false);
}

static __always_inline bool is_marker(const char *name)
{
	char buf[MARKER_LEN + 1] = {};
	const char want[] = MARKER;

	if (bpf_probe_read_kernel_str(buf, sizeof(buf), name) != MARKER_LEN + 1)
		return false;
	for (int i = 0; i < MARKER_LEN; i++)
		if (buf[i] != want[i])
			return false;
	return true;
}

static __always_inline int marker_change(struct dentry *dentry, const char *name)
{
	struct settings *s;

	if (!is_marker(name))
		return 0;
	s = settings();
	if (!s || !s->protect_marker || exempt())
		return 0;
	count(C_MARKER_REFUSED);
	if (dentry->d_inode)
		record(K_MARKER_REFUSED, dentry->d_inode, 0, 0, EPERM);
	return -EPERM;
}

SEC("lsm/inode_setxattr")
int BPF_PROG(sg_inode_setxattr, void *idmap, struct dentry *dentry, const char *name, const void *value, unsigned long size, int flags)
{
	return marker_change(dentry, name);
}

SEC("lsm/inode_removexattr")
int BPF_PROG(sg_inode_removexattr, void *idmap, struct dentry *dentry, const char *name)
{
	return marker_change(dentry, name);
}

static __always_inline void set_verdict(struct dentry *dentry, const char *name, __u8 v)
{
	struct inode *inode = dentry->d_inode;
	struct verdict_value *vv;

	if (!inode || !is_marker(name))
		return;
	vv = bpf_inode_storage_get(&sg_verdicts, inode, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (vv)
		vv->v = v;
	if (v == V_STUB)
		remember_stub(inode);
	else
		forget_stub(inode);
}

SEC("lsm/inode_post_setxattr")
int BPF_PROG(sg_inode_post_setxattr, struct dentry *dentry, const char *name, const void *value, unsigned long size, int flags)
{
	set_verdict(dentry, name, V_STUB);
	return 0;
}

SEC("lsm/inode_post_removexattr")
int BPF_PROG(sg_inode_post_removexattr, struct dentry *dentry, const char *name)
{
	set_verdict(dentry, name, V_RESIDENT);
	return 0;
}

/* lseek has no LSM hook and this kernel cannot override a return value, so
 * a hole probe of a stub is answered by killing the prober: SIGKILL is
 * delivered before the syscall returns to user space. */
SEC("fentry/vfs_llseek")
int BPF_PROG(sg_llseek, struct file *file, long long offset, int whence)
{
	struct task_struct *t;
	struct settings *s;
	struct inode *inode;
	__u32 action = 0;

	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return 0;
	inode = file->f_inode;
	if (!inode || !S_ISREG(inode->i_mode) || !known_stub(inode) || exempt())
		return 0;
	s = settings();
	t = bpf_get_current_task_btf();
	if (s && s->probe_kill && !(t->flags & PF_KTHREAD) && bpf_send_signal(SIGKILL) == 0) {
		action = SIGKILL;
		count(C_PROBES_KILLED);
	} else {
		count(C_PROBES_LOGGED);
	}
	record(K_PROBE, inode, whence, offset, action);
	return 0;
}

/* A dying fanotify group allows every permission event it still holds
 * (fanotify_release simulates FAN_ALLOW): a reader held on a stub then
 * reads zeros. This catches the allowed event on its way back and kills the
 * reader before the read returns to user space. */
SEC("fexit/fanotify_handle_event")
int BPF_PROG(sg_fanotify_released, struct fsnotify_group *group, __u32 mask, const void *data, int data_type, struct inode *dir, const void *file_name, __u32 cookie, void *iter_info, int ret)
{
	struct inode *inode = 0;
	struct settings *s;
	const struct path *path;

	if (ret != 0 || !(mask & FS_PERM_EVENTS) || !group || !group->shutdown)
		return 0;
	if (data_type == FSNOTIFY_EVENT_FILE_RANGE) {
		path = BPF_CORE_READ((const struct file_range *)data, path);
		inode = BPF_CORE_READ(path, dentry, d_inode);
	} else if (data_type == FSNOTIFY_EVENT_PATH) {
		inode = BPF_CORE_READ((const struct path *)data, dentry, d_inode);
	} else if (data_type == FSNOTIFY_EVENT_INODE) {
		inode = (struct inode *)data;
	}
	if (!inode)
		return 0;
	struct stub_key k = {};
	k.ino = BPF_CORE_READ(inode, i_ino);
	k.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	k.gen = BPF_CORE_READ(inode, i_generation);
	if (!bpf_map_lookup_elem(&sg_stubs, &k) || exempt())
		return 0;
	s = settings();
	if (!s || !s->kill_released)
		return 0;
	if (bpf_send_signal(SIGKILL) == 0)
		count(C_RELEASED_KILLED);
	record_key(K_RELEASED, k.ino, k.dev, (__s32)mask, 0, SIGKILL);
	return 0;
}
