/* SPDX-License-Identifier: GPL-2.0 */
#ifndef STRATA_SPARSE_H
#define STRATA_SPARSE_H

#include <bpf/bpf_core_read.h>

/*
 * allocated_bytes returns the bytes a regular file has allocated or reserved
 * (delayed allocation), as the filesystem counts them. XFS never updates
 * inode->i_blocks (it is 0 for every XFS file: TestKernelFacts), so its
 * counters are read from struct xfs_inode; ext4 adds its delayed-allocation
 * reservation, which i_blocks lacks until writeback.
 */
static __always_inline __u64 allocated_bytes(struct inode *inode)
{
	struct super_block *sb = inode->i_sb;
	unsigned long magic = sb->s_magic;
	__u8 bits = sb->s_blocksize_bits;

	if (magic == XFS_SUPER_MAGIC && bpf_core_type_exists(struct xfs_inode)) {
		struct xfs_inode *ip = (void *)inode - bpf_core_field_offset(struct xfs_inode, i_vnode);
		__u64 blocks = BPF_CORE_READ(ip, i_nblocks) + BPF_CORE_READ(ip, i_delayed_blks);

		return blocks << (bits & 63);
	}
	if (magic == EXT4_SUPER_MAGIC && bpf_core_type_exists(struct ext4_inode_info)) {
		struct ext4_inode_info *ei = (void *)inode - bpf_core_field_offset(struct ext4_inode_info, vfs_inode);
		__u64 reserved = BPF_CORE_READ(ei, i_reserved_data_blocks);

		return (inode->i_blocks << 9) + (reserved << (bits & 63));
	}
	return inode->i_blocks << 9;
}

/* looks_sparse: fewer bytes allocated than the size. Every stub is. */
static __always_inline bool looks_sparse(struct inode *inode)
{
	return allocated_bytes(inode) < (__u64)inode->i_size;
}

#endif
