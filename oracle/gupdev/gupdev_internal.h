/* SPDX-License-Identifier: GPL-2.0 */
/* gupdev's insides, shared by its files: the device and its secondary page table. */
#ifndef GUPDEV_INTERNAL_H
#define GUPDEV_INTERNAL_H

#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>

#include "gupdev.h"

#ifndef CONFIG_MMU_NOTIFIER
#error "gupdev needs CONFIG_MMU_NOTIFIER (hidden: select it with e.g. CONFIG_KVM)"
#endif

#ifdef GUPDEV_HAVE_FOLL_HONOR_NUMA_FAULT
#define GD_FOLL_HONOR_NUMA_FAULT FOLL_HONOR_NUMA_FAULT
#define GD_CAPS GUPDEV_CAP_HONOR_NUMA_FAULT
#else
/* Pre-6.5 GUP: without FOLL_FORCE it never follows a protnone PTE (FOLL_NUMA, or
 * Debian 6.1's backported gup_can_follow_protnone(flags) = flags & FOLL_FORCE). */
#define GD_FOLL_HONOR_NUMA_FAULT 0
#define GD_CAPS GUPDEV_CAP_IMPLICIT_NUMA_FAULT
#endif

/* gd_entry.flags */
#define E_VALID (1u << 0)
#define E_WRITE (1u << 1)
#define E_YOUNG (1u << 2)
#define E_REF (1u << 3)      /* holds a FOLL_GET reference */
#define E_PIN (1u << 4)      /* holds a FOLL_PIN pin */
#define E_SKIPPED (1u << 5)  /* a smart notifier kept it through an invalidation */
#define E_STALE (1u << 6)    /* seen stale; stale_since says since when */
#define E_ZAPPED (1u << 7)   /* invalid: an invalidation dropped it; its next map is a refill */

struct gd_entry {
	struct page *page;
	u64 stale_since;
	u32 flags;
};

struct gd_dev {
	struct mutex ioctl_lock;   /* serialises the ioctls of one file */
	spinlock_t lock;           /* table, invalidation state, counters */
	struct mm_struct *mm;      /* mmgrab()ed once attached */
	struct mmu_notifier mn;
	bool mn_registered;
	u32 mode;
	int node;
	unsigned long start;
	unsigned long npages;
	struct gd_entry *table;
	u64 inval_seq;
	int inval_active;
	u64 stale_now;
	struct gupdev_stats st;
};

/* Pages held (referenced or pinned) by all devices. */
extern atomic_long_t gd_held;
extern const struct mmu_notifier_ops gd_mn_ops;

static inline unsigned long gd_addr(struct gd_dev *d, unsigned long idx)
{
	return d->start + idx * PAGE_SIZE;
}

/* gupdev_smmu.c: the secondary page table and its MMU notifier */
bool gd_overlap(struct gd_dev *d, unsigned long start, unsigned long end,
		unsigned long *first, unsigned long *last);
int gd_user_range(struct gd_dev *d, u64 start, u64 length, unsigned long *first,
		  unsigned long *n);
bool gd_entry_stale(struct mm_struct *mm, unsigned long addr, struct page *page);
unsigned long gd_count_protnone(struct mm_struct *mm, unsigned long addr, unsigned long n);
void gd_note_stale(struct gd_dev *d, struct gd_entry *e, bool stale, u64 now);
void gd_drop_entry(struct gd_dev *d, struct gd_entry *e, u64 now);
u64 gd_drop_range(struct gd_dev *d, unsigned long first, unsigned long last);

/* gupdev_gup.c: filling the table through GUP */
long gd_map(struct gd_dev *d, struct gupdev_map *m);

#endif /* GUPDEV_INTERNAL_H */
