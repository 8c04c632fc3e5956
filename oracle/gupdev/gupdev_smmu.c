// SPDX-License-Identifier: GPL-2.0
/*
 * gupdev's secondary page table: entries, their staleness against the primary page
 * table, and the MMU notifier (unconditional or smart) that keeps them coherent.
 */
#include <linux/ktime.h>
#include <linux/moduleparam.h>
#include <linux/pgtable.h>
#include <linux/sysfs.h>

#include "gupdev_internal.h"

/* Pages held (referenced or pinned) by all devices: 0 once every file is closed. */
atomic_long_t gd_held = ATOMIC_LONG_INIT(0);

static int held_pages_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%ld\n", atomic_long_read(&gd_held));
}

static const struct kernel_param_ops held_pages_ops = { .get = held_pages_get };
module_param_cb(held_pages, &held_pages_ops, NULL, 0444);
MODULE_PARM_DESC(held_pages, "pages referenced or pinned by gupdev entries");

/* Indices [*first, *last) of the window covered by [start, end). False if none. */
bool gd_overlap(struct gd_dev *d, unsigned long start, unsigned long end,
		       unsigned long *first, unsigned long *last)
{
	unsigned long wend = gd_addr(d, d->npages);

	if (end <= d->start || start >= wend)
		return false;
	*first = (max(start, d->start) - d->start) >> PAGE_SHIFT;
	*last = (min(end, wend) - d->start + PAGE_SIZE - 1) >> PAGE_SHIFT;
	return true;
}

/*
 * Reads the primary translation of addr without locks, the way GUP-fast does
 * (interrupts off, so page tables are not freed under us). Fills the pfn and
 * whether the PTE (or PMD) is protnone; -ENOENT when nothing is present.
 */
static int gd_walk(struct mm_struct *mm, unsigned long addr, unsigned long *pfn,
		   bool *protnone)
{
	unsigned long irqflags;
	pgd_t *pgdp;
	p4d_t *p4dp;
	pud_t *pudp, pud;
	pmd_t pmd;
	pte_t pte;
	int ret = -ENOENT;

	local_irq_save(irqflags);
	pgdp = pgd_offset(mm, addr);
	if (pgd_none(READ_ONCE(*pgdp)) || pgd_bad(READ_ONCE(*pgdp)))
		goto out;
	p4dp = p4d_offset(pgdp, addr);
	if (p4d_none(READ_ONCE(*p4dp)) || p4d_bad(READ_ONCE(*p4dp)))
		goto out;
	pudp = pud_offset(p4dp, addr);
	pud = READ_ONCE(*pudp);
	if (pud_none(pud) || pud_bad(pud))
		goto out;
	pmd = READ_ONCE(*pmd_offset(pudp, addr));
	if (pmd_none(pmd) || !pmd_present(pmd))
		goto out;
	if (pmd_trans_huge(pmd)) {
		*pfn = pmd_pfn(pmd) + ((addr & ~PMD_MASK) >> PAGE_SHIFT);
		*protnone = pmd_protnone(pmd);
		ret = 0;
		goto out;
	}
	if (pmd_bad(pmd))
		goto out;
	pte = ptep_get_lockless(pte_offset_kernel(&pmd, addr));
	if (pte_present(pte)) {
		*pfn = pte_pfn(pte);
		*protnone = pte_protnone(pte);
		ret = 0;
	}
out:
	local_irq_restore(irqflags);
	return ret;
}

/* Pages of [addr, addr + n pages) whose primary PTE is present and protnone. */
unsigned long gd_count_protnone(struct mm_struct *mm, unsigned long addr, unsigned long n)
{
	unsigned long i, pfn, count = 0;
	bool protnone;

	for (i = 0; i < n; i++)
		if (!gd_walk(mm, addr + i * PAGE_SIZE, &pfn, &protnone) && protnone)
			count++;
	return count;
}

/* Is the primary PTE of addr protnone and still on this entry's frame? */
static bool gd_primary_protnone(struct mm_struct *mm, unsigned long addr, struct page *page)
{
	unsigned long pfn;
	bool protnone;

	return !gd_walk(mm, addr, &pfn, &protnone) && protnone && pfn == page_to_pfn(page);
}

/*
 * Does the entry grant access the primary mapping no longer grants: the VMA is gone
 * or inaccessible (mprotect PROT_NONE), or the PTE no longer maps this frame? A NUMA
 * protnone PTE of an accessible VMA on the same frame is not stale. Needs mmap_lock.
 */
bool gd_entry_stale(struct mm_struct *mm, unsigned long addr, struct page *page)
{
	struct vm_area_struct *vma = vma_lookup(mm, addr);
	unsigned long pfn;
	bool protnone;

	if (!vma || !vma_is_accessible(vma))
		return true;
	return gd_walk(mm, addr, &pfn, &protnone) || pfn != page_to_pfn(page);
}

static void gd_clear_stale(struct gd_dev *d, struct gd_entry *e, u64 now)
{
	if (e->flags & E_STALE) {
		d->st.stale_mapping_ns += now - e->stale_since;
		d->stale_now--;
	}
	e->flags &= ~(E_STALE | E_SKIPPED);
}

/* Records what a check found. A kept (skipped) entry is stale since the skip. */
void gd_note_stale(struct gd_dev *d, struct gd_entry *e, bool stale, u64 now)
{
	if (!stale) {
		gd_clear_stale(d, e, now);
		return;
	}
	if (e->flags & E_STALE)
		return;
	if (!(e->flags & E_SKIPPED))
		e->stale_since = now;
	e->flags |= E_STALE;
	d->stale_now++;
	d->st.stale_mappings_max = max(d->st.stale_mappings_max, d->stale_now);
}

static void gd_release_page(struct page *page, u32 flags)
{
	if (flags & E_PIN)
		unpin_user_page(page);
	else if (flags & E_REF)
		put_page(page);
	else
		return;
	atomic_long_dec(&gd_held);
}

void gd_drop_entry(struct gd_dev *d, struct gd_entry *e, u64 now)
{
	gd_clear_stale(d, e, now);
	gd_release_page(e->page, e->flags);
	e->page = NULL;
	e->flags = 0;
}

u64 gd_drop_range(struct gd_dev *d, unsigned long first, unsigned long last)
{
	u64 now = ktime_get_ns(), n = 0;
	unsigned long i;

	for (i = first; i < last; i++) {
		if (d->table[i].flags & E_VALID) {
			gd_drop_entry(d, &d->table[i], now);
			n++;
		}
	}
	return n;
}

/* ---- MMU notifier ---- */

static struct gd_dev *mn_dev(struct mmu_notifier *mn)
{
	return container_of(mn, struct gd_dev, mn);
}

/*
 * Drops the entries of the range; a smart notifier keeps those whose primary PTE is
 * already protnone when the event is a protection change, reasoning that such a PTE
 * does not change (change_pte_range() skips protnone PTEs for NUMA scans; for an
 * mprotect(PROT_NONE) the new PTE is protnone too) — wrong for mprotect: the VMA
 * becomes inaccessible while the device keeps its entry.
 */
static int gd_invalidate_start(struct mmu_notifier *mn, const struct mmu_notifier_range *r)
{
	struct gd_dev *d = mn_dev(mn);
	bool smart = d->mode == GUPDEV_NOTIFIER_SMART &&
		     r->event == MMU_NOTIFY_PROTECTION_VMA;
	unsigned long first, last, i;
	u64 now = ktime_get_ns();

	spin_lock(&d->lock);
	if (!gd_overlap(d, r->start, r->end, &first, &last))
		goto out;
	d->inval_active++;
	d->inval_seq++;
	d->st.invalidations++;
	switch (r->event) {
	case MMU_NOTIFY_PROTECTION_VMA:
		d->st.invalidations_protection_vma++;
		break;
	case MMU_NOTIFY_CLEAR:
		d->st.invalidations_clear++;
		break;
	case MMU_NOTIFY_UNMAP:
		d->st.invalidations_unmap++;
		break;
	default:
		d->st.invalidations_other++;
	}
	for (i = first; i < last; i++) {
		struct gd_entry *e = &d->table[i];

		if (!(e->flags & E_VALID))
			continue;
		if (smart && gd_primary_protnone(r->mm, gd_addr(d, i), e->page)) {
			if (!(e->flags & (E_SKIPPED | E_STALE)))
				e->stale_since = now;
			e->flags |= E_SKIPPED;
			d->st.entries_skipped++;
			continue;
		}
		gd_drop_entry(d, e, now);
		e->flags = E_ZAPPED;
		d->st.entries_dropped++;
	}
out:
	spin_unlock(&d->lock);
	return 0;
}

/* After a protection change (caller holds mmap_lock) the kept entries are checked. */
static void gd_invalidate_end(struct mmu_notifier *mn, const struct mmu_notifier_range *r)
{
	struct gd_dev *d = mn_dev(mn);
	unsigned long first, last, i;
	u64 now = ktime_get_ns();

	spin_lock(&d->lock);
	if (!gd_overlap(d, r->start, r->end, &first, &last))
		goto out;
	if (d->inval_active > 0)
		d->inval_active--;
	d->inval_seq++;
	if (d->mode != GUPDEV_NOTIFIER_SMART || r->event != MMU_NOTIFY_PROTECTION_VMA)
		goto out;
	for (i = first; i < last; i++) {
		struct gd_entry *e = &d->table[i];

		if ((e->flags & (E_VALID | E_SKIPPED)) == (E_VALID | E_SKIPPED))
			gd_note_stale(d, e, gd_entry_stale(r->mm, gd_addr(d, i), e->page), now);
	}
out:
	spin_unlock(&d->lock);
}

static void gd_mn_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	struct gd_dev *d = mn_dev(mn);

	spin_lock(&d->lock);
	gd_drop_range(d, 0, d->npages);
	spin_unlock(&d->lock);
}

/* Answers page aging from the device's accessed bits, clearing them if asked. */
static int gd_young(struct gd_dev *d, struct mm_struct *mm, unsigned long start,
		    unsigned long end, bool clear)
{
	unsigned long first, last, i;
	int young = 0;

	spin_lock(&d->lock);
	if (clear)
		d->st.young_clear_calls++;
	else
		d->st.young_test_calls++;
	if (!gd_overlap(d, start, end, &first, &last))
		goto out;
	for (i = first; i < last; i++) {
		struct gd_entry *e = &d->table[i];

		if ((e->flags & (E_VALID | E_YOUNG)) != (E_VALID | E_YOUNG))
			continue;
		young = 1;
		if (!clear)
			continue;
		e->flags &= ~E_YOUNG;
		d->st.young_answered++;
		if (gd_primary_protnone(mm, gd_addr(d, i), e->page))
			d->st.young_secondary_only_protnone++;
	}
out:
	spin_unlock(&d->lock);
	return young;
}

/*
 * The young callbacks return int in 6.1 and 6.12 and bool in 7.3.4 (include/linux/
 * mmu_notifier.h): the ops' own return type is taken, so a tree is judged by what it has.
 */
typedef typeof(((struct mmu_notifier_ops *)0)->test_young(NULL, NULL, 0)) gd_young_ret;

static gd_young_ret gd_clear_flush_young(struct mmu_notifier *mn, struct mm_struct *mm,
					 unsigned long start, unsigned long end)
{
	return gd_young(mn_dev(mn), mm, start, end, true);
}

static gd_young_ret gd_test_young(struct mmu_notifier *mn, struct mm_struct *mm, unsigned long addr)
{
	return gd_young(mn_dev(mn), mm, addr, addr + 1, false);
}

const struct mmu_notifier_ops gd_mn_ops = {
	.release = gd_mn_release,
	.clear_flush_young = gd_clear_flush_young,
	.clear_young = gd_clear_flush_young,
	.test_young = gd_test_young,
	.invalidate_range_start = gd_invalidate_start,
	.invalidate_range_end = gd_invalidate_end,
};

/* Window indices of a user range, which must be page aligned and inside the window. */
int gd_user_range(struct gd_dev *d, u64 start, u64 length, unsigned long *first,
			 unsigned long *n)
{
	if (!d->mm)
		return -ENOTCONN;
	if (!length || (start | length) & ~PAGE_MASK || start < d->start ||
	    length > (u64)(d->npages << PAGE_SHIFT) ||
	    start - d->start > (u64)(d->npages << PAGE_SHIFT) - length)
		return -EINVAL;
	*first = (start - d->start) >> PAGE_SHIFT;
	*n = length >> PAGE_SHIFT;
	return 0;
}
