/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * gupdev: a test device with a secondary MMU, for numasim's kernel oracle.
 *
 * User-space ABI of /dev/gupdev. Stable and versioned: GUPDEV_ABI_VERSION grows only
 * by appending fields or ioctls; a struct's size is part of its ioctl number, so a
 * changed layout is a new number, never a silent reinterpretation. See README.md.
 */
#ifndef _UAPI_GUPDEV_H
#define _UAPI_GUPDEV_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define GUPDEV_ABI_VERSION 3
#define GUPDEV_IOC_MAGIC 0xB7

/* gupdev_version.caps: what the running kernel can do. */
/* FOLL_HONOR_NUMA_FAULT exists (v6.5+): GUP follows protnone PTEs unless it is passed. */
#define GUPDEV_CAP_HONOR_NUMA_FAULT (1u << 0)
/* No such flag, and every non-FOLL_FORCE GUP takes NUMA hinting faults (Debian 6.1). */
#define GUPDEV_CAP_IMPLICIT_NUMA_FAULT (1u << 1)

struct gupdev_version {
	__u32 abi_version;      /* GUPDEV_ABI_VERSION */
	__u32 caps;             /* GUPDEV_CAP_* */
	char release[64];       /* utsname()->release the module runs in */
};

/* gupdev_attach.notifier */
#define GUPDEV_NOTIFIER_NONE 0          /* no MMU notifier: entries hold a page reference */
#define GUPDEV_NOTIFIER_UNCONDITIONAL 1 /* drop every entry in an invalidated range */
#define GUPDEV_NOTIFIER_SMART 2         /* skip entries whose primary PTE is already protnone
					 * on MMU_NOTIFY_PROTECTION_VMA (the hazard) */

/* Binds this open file (one device, one secondary page table) to one mm. Once only. */
struct gupdev_attach {
	__s32 pid;              /* target process; 0 = the caller's own mm */
	__u32 notifier;         /* GUPDEV_NOTIFIER_* */
	__u64 start;            /* window of the secondary page table: page aligned */
	__u64 length;           /* bytes, page multiple, at most GUPDEV_MAX_PAGES pages */
	__s32 node;             /* the device's node (kernel-thread GUP runs there); -1 none */
	__u32 reserved;         /* must be 0 */
};
#define GUPDEV_MAX_PAGES (1u << 20)

/* gupdev_map.flags */
#define GUPDEV_MAP_WRITE (1u << 0)             /* FOLL_WRITE */
#define GUPDEV_MAP_HONOR_NUMA_FAULT (1u << 1)  /* FOLL_HONOR_NUMA_FAULT (EOPNOTSUPP without the cap) */
#define GUPDEV_MAP_PIN_LONGTERM (1u << 2)      /* pin_user_pages_remote(FOLL_LONGTERM) */
#define GUPDEV_MAP_KTHREAD (1u << 3)           /* GUP from a kernel thread on the device's node */
#define GUPDEV_MAP_FLAGS_ALL 0xfu

/* Maps the invalid entries of [start, start+length) through GUP, as a device fault
 * would; valid entries are kept as they are. */
struct gupdev_map {
	__u64 start;
	__u64 length;
	__u32 flags;            /* GUPDEV_MAP_* */
	__u32 reserved;         /* must be 0 */
	/* out */
	__u64 mapped;           /* entries made valid by this call */
	__u64 hint_faults;      /* hinting faults the GUP calls took: protnone PTEs of the range
				 * they left accessible (ABI 2; ABI 1: the vmstat delta) */
	__u64 hint_faults_local;/* /proc/vmstat numa_hint_faults_local delta around the calls */
	__u64 pages_migrated;   /* numa_pages_migrated delta */
	__u64 retries;          /* GUP batches redone because an invalidation raced them */
};

/* Drops the entries of [start, start+length). */
struct gupdev_range {
	__u64 start;
	__u64 length;
	__u64 dropped;          /* out */
};

/* gupdev_access.flags */
#define GUPDEV_ACCESS_WRITE (1u << 0)   /* write one byte per page (else read one word) */

/* The device accesses its valid entries in [start, start+length) through the stored page. */
struct gupdev_access {
	__u64 start;
	__u64 length;
	__u32 flags;            /* GUPDEV_ACCESS_* */
	__u32 reserved;         /* must be 0 */
	/* out */
	__u64 accessed;         /* valid entries accessed */
	__u64 stale;            /* of which stale: VMA gone / PROT_NONE, or PTE maps another frame */
	__u64 invalid;          /* pages of the range without a valid entry */
	__u64 sum;              /* sum of the words read (keeps the reads real) */
};

/* Counters, under numasim's names where they have one. GUPDEV_IOC_STATS first rechecks
 * every valid entry against the primary page table (updating the stale gauge). */
struct gupdev_stats {
	__u64 entries_valid;
	__u64 entries_pinned;           /* valid entries holding a FOLL_PIN pin */
	__u64 entries_ref;              /* valid entries holding a page reference */
	__u64 invalidations;            /* invalidate_range_start calls overlapping the window */
	__u64 invalidations_protection_vma; /* of which MMU_NOTIFY_PROTECTION_VMA */
	__u64 entries_dropped;          /* entries dropped by invalidations */
	__u64 entries_skipped;          /* entries a smart notifier kept */
	__u64 stale_mappings;           /* gauge: stale entries at the last check */
	__u64 stale_mappings_max;       /* stale.mappings_max */
	__u64 stale_mapping_ns;         /* stale.mapping_ns: sum over entries of time stale */
	__u64 stale_accesses;           /* stale.accesses */
	__u64 accesses;                 /* all device accesses */
	__u64 young_clear_calls;        /* clear_young + clear_flush_young callbacks */
	__u64 young_test_calls;         /* test_young callbacks */
	__u64 young_answered;           /* pages answered young from the device's accessed bits */
	__u64 young_secondary_only_protnone; /* young.secondary_only_protnone */
	__u64 hint_faults;              /* sum of gupdev_map.hint_faults */
	__u64 hint_faults_local;
	__u64 pages_migrated;
	__u64 map_retries;
	/* ABI 3: invalidations by mmu_notifier_event, and the refills of dropped entries */
	__u64 invalidations_clear;      /* MMU_NOTIFY_CLEAR (migration, KSM, COW) */
	__u64 invalidations_unmap;      /* MMU_NOTIFY_UNMAP (munmap) */
	__u64 invalidations_other;      /* every other event */
	__u64 entries_refilled;         /* maps of entries an invalidation had dropped */
};

#define GUPDEV_IOC_VERSION _IOR(GUPDEV_IOC_MAGIC, 0, struct gupdev_version)
#define GUPDEV_IOC_ATTACH _IOW(GUPDEV_IOC_MAGIC, 1, struct gupdev_attach)
#define GUPDEV_IOC_MAP _IOWR(GUPDEV_IOC_MAGIC, 2, struct gupdev_map)
#define GUPDEV_IOC_UNMAP _IOWR(GUPDEV_IOC_MAGIC, 3, struct gupdev_range)
#define GUPDEV_IOC_ACCESS _IOWR(GUPDEV_IOC_MAGIC, 4, struct gupdev_access)
#define GUPDEV_IOC_STATS _IOR(GUPDEV_IOC_MAGIC, 5, struct gupdev_stats)

#endif /* _UAPI_GUPDEV_H */
