// SPDX-License-Identifier: GPL-2.0
/*
 * gupdev: a test device with a secondary MMU, for numasim's kernel oracle.
 *
 * One open file of /dev/gupdev is one device: it attaches to one mm, keeps a
 * "secondary page table" (an array of struct page * with valid/write/young bits)
 * over a window of that mm, fills it through GUP with the flags user space asks
 * for, keeps it coherent (or not) through an MMU notifier, and accesses memory
 * through it on command, counting accesses through stale entries. The ABI is in
 * gupdev.h, what the module can and cannot tell in README.md.
 *
 * Builds against 6.1 (Debian 6.1.0-NN) and 6.12 headers: the differences are the
 * GUP signatures (vmas argument gone in 6.5) and FOLL_HONOR_NUMA_FAULT (6.5+,
 * detected by Kbuild, not by version number: a backport would carry it).
 */
#include <linux/cpumask.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/kthread.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/pgtable.h>
#include <linux/pid.h>
#include <linux/sched/mm.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/utsname.h>
#include <linux/version.h>
#include <linux/vmalloc.h>
#include <linux/vmstat.h>

#include "gupdev.h"

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 5, 0)
#define gd_gup_remote(mm, start, n, flags, pages, locked) \
	get_user_pages_remote(mm, start, n, flags, pages, NULL, locked)
#define gd_pup_remote(mm, start, n, flags, pages, locked) \
	pin_user_pages_remote(mm, start, n, flags, pages, NULL, locked)
#else
#define gd_gup_remote get_user_pages_remote
#define gd_pup_remote pin_user_pages_remote
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

#define GD_BATCH 512
#define GD_MAX_RETRIES 16

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

/* Pages held (referenced or pinned) by all devices: 0 once every file is closed. */
static atomic_long_t gd_held = ATOMIC_LONG_INIT(0);

static int held_pages_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%ld\n", atomic_long_read(&gd_held));
}

static const struct kernel_param_ops held_pages_ops = { .get = held_pages_get };
module_param_cb(held_pages, &held_pages_ops, NULL, 0444);
MODULE_PARM_DESC(held_pages, "pages referenced or pinned by gupdev entries");

static unsigned long gd_addr(struct gd_dev *d, unsigned long idx)
{
	return d->start + idx * PAGE_SIZE;
}

/* Indices [*first, *last) of the window covered by [start, end). False if none. */
static bool gd_overlap(struct gd_dev *d, unsigned long start, unsigned long end,
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
static bool gd_entry_stale(struct mm_struct *mm, unsigned long addr, struct page *page)
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
static void gd_note_stale(struct gd_dev *d, struct gd_entry *e, bool stale, u64 now)
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

static void gd_drop_entry(struct gd_dev *d, struct gd_entry *e, u64 now)
{
	gd_clear_stale(d, e, now);
	gd_release_page(e->page, e->flags);
	e->page = NULL;
	e->flags = 0;
}

static u64 gd_drop_range(struct gd_dev *d, unsigned long first, unsigned long last)
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
	if (r->event == MMU_NOTIFY_PROTECTION_VMA)
		d->st.invalidations_protection_vma++;
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

static int gd_clear_flush_young(struct mmu_notifier *mn, struct mm_struct *mm,
				unsigned long start, unsigned long end)
{
	return gd_young(mn_dev(mn), mm, start, end, true);
}

static int gd_test_young(struct mmu_notifier *mn, struct mm_struct *mm, unsigned long addr)
{
	return gd_young(mn_dev(mn), mm, addr, addr + PAGE_SIZE, false);
}

static const struct mmu_notifier_ops gd_mn_ops = {
	.release = gd_mn_release,
	.clear_flush_young = gd_clear_flush_young,
	.clear_young = gd_clear_flush_young,
	.test_young = gd_test_young,
	.invalidate_range_start = gd_invalidate_start,
	.invalidate_range_end = gd_invalidate_end,
};

/* ---- GUP into the table ---- */

struct gd_gup {
	struct gd_dev *d;
	unsigned long first;       /* window index */
	unsigned long n;
	unsigned int gup_flags;
	bool pin;
	bool keep_ref;
	u64 mapped;
	u64 retries;
	long err;
	struct completion done;
};

/* Installs a GUP batch unless an invalidation raced it; false: redo the batch. */
static bool gd_install(struct gd_gup *g, unsigned long idx, struct page **pages, long got,
		       u64 seq)
{
	struct gd_dev *d = g->d;
	u32 hold = g->pin ? E_PIN : g->keep_ref ? E_REF : 0;
	u64 now = ktime_get_ns();
	long i;

	spin_lock(&d->lock);
	if (d->inval_active || d->inval_seq != seq) {
		spin_unlock(&d->lock);
		return false;
	}
	for (i = 0; i < got; i++) {
		struct gd_entry *e = &d->table[idx + i];

		if (e->flags & E_VALID)
			gd_drop_entry(d, e, now);
		e->page = pages[i];
		e->flags = E_VALID | hold | ((g->gup_flags & FOLL_WRITE) ? E_WRITE : 0);
	}
	if (hold)
		atomic_long_add(got, &gd_held);
	g->mapped += got;
	spin_unlock(&d->lock);
	return true;
}

static void gd_release_batch(struct page **pages, long got, bool pin)
{
	if (pin)
		unpin_user_pages(pages, got);
	else
		while (got--)
			put_page(pages[got]);
}

static long gd_gup_batch(struct gd_gup *g, struct mm_struct *mm, unsigned long idx, long n,
			 struct page **pages)
{
	unsigned long addr = gd_addr(g->d, idx);
	long got;

	/* No "locked" argument: 6.1 refuses it with FOLL_LONGTERM (WARN in gup.c). */
	mmap_read_lock(mm);
	if (g->pin)
		got = gd_pup_remote(mm, addr, n, g->gup_flags, pages, NULL);
	else
		got = gd_gup_remote(mm, addr, n, g->gup_flags, pages, NULL);
	mmap_read_unlock(mm);
	return got ? got : -EFAULT;
}

static long gd_gup_range(struct gd_gup *g)
{
	struct gd_dev *d = g->d;
	unsigned long idx = g->first, end = g->first + g->n;
	struct page **pages;
	int tries = 0;
	long err = 0;

	if (!mmget_not_zero(d->mm))
		return -ESRCH;
	pages = kvmalloc_array(GD_BATCH, sizeof(*pages), GFP_KERNEL);
	if (!pages) {
		mmput(d->mm);
		return -ENOMEM;
	}
	while (idx < end) {
		long got;
		u64 seq;

		spin_lock(&d->lock);
		seq = d->inval_seq;
		spin_unlock(&d->lock);
		got = gd_gup_batch(g, d->mm, idx, min_t(unsigned long, GD_BATCH, end - idx), pages);
		if (got < 0) {
			err = got;
			break;
		}
		if (!gd_install(g, idx, pages, got, seq)) {
			gd_release_batch(pages, got, g->pin);
			g->retries++;
			if (++tries > GD_MAX_RETRIES) {
				err = -EAGAIN;
				break;
			}
			continue;
		}
		/* Notifier-coherent entries hold nothing, as KVM's and HMM's don't. */
		if (!g->pin && !g->keep_ref)
			gd_release_batch(pages, got, false);
		idx += got;
		tries = 0;
	}
	kvfree(pages);
	mmput(d->mm);
	return err;
}

static int gd_gup_thread(void *arg)
{
	struct gd_gup *g = arg;

	g->err = gd_gup_range(g);
	complete(&g->done);
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
	return 0;
}

/* Runs the GUP from a kernel thread allowed only on the device's node. */
static long gd_gup_on_node(struct gd_gup *g)
{
	struct task_struct *t;

	init_completion(&g->done);
	t = kthread_create_on_node(gd_gup_thread, g, g->d->node, "gupdev/%d", g->d->node);
	if (IS_ERR(t))
		return PTR_ERR(t);
	/* A memory-only node has no CPU to run on: the request cannot be honoured. */
	if (set_cpus_allowed_ptr(t, cpumask_of_node(g->d->node))) {
		kthread_stop(t);
		return -EINVAL;
	}
	wake_up_process(t);
	wait_for_completion(&g->done);
	kthread_stop(t);
	return g->err;
}

/* vmstat events the GUP may cause: hinting faults and the migrations they start. */
struct gd_events {
	unsigned long hint_faults, hint_faults_local, migrated;
};

static int gd_read_events(struct gd_events *ev)
{
	unsigned long *all = kcalloc(NR_VM_EVENT_ITEMS, sizeof(*all), GFP_KERNEL);

	if (!all)
		return -ENOMEM;
	all_vm_events(all);
#ifdef CONFIG_NUMA_BALANCING
	ev->hint_faults = all[NUMA_HINT_FAULTS];
	ev->hint_faults_local = all[NUMA_HINT_FAULTS_LOCAL];
	ev->migrated = all[NUMA_PAGE_MIGRATE];
#else
	memset(ev, 0, sizeof(*ev));
#endif
	kfree(all);
	return 0;
}

/* ---- ioctls ---- */

/* Window indices of a user range, which must be page aligned and inside the window. */
static int gd_user_range(struct gd_dev *d, u64 start, u64 length, unsigned long *first,
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

static struct mm_struct *gd_get_mm(pid_t pid)
{
	struct task_struct *task;
	struct mm_struct *mm;
	struct pid *p;

	if (!pid) {
		mm = current->mm;
		if (mm)
			mmget(mm);
		return mm;
	}
	p = find_get_pid(pid);
	task = p ? get_pid_task(p, PIDTYPE_PID) : NULL;
	put_pid(p);
	if (!task)
		return NULL;
	mm = get_task_mm(task);
	put_task_struct(task);
	return mm;
}

static long gd_attach(struct gd_dev *d, struct gupdev_attach *a)
{
	struct mm_struct *mm;
	long err = 0;

	if (d->mm)
		return -EBUSY;
	if (a->reserved || a->notifier > GUPDEV_NOTIFIER_SMART || a->pid < 0 ||
	    !a->length || (a->start | a->length) & ~PAGE_MASK ||
	    a->length >> PAGE_SHIFT > GUPDEV_MAX_PAGES ||
	    a->start >= TASK_SIZE_MAX || a->length > TASK_SIZE_MAX - a->start)
		return -EINVAL;
	if (a->node != NUMA_NO_NODE &&
	    (a->node < 0 || a->node >= MAX_NUMNODES || !node_online(a->node)))
		return -EINVAL;
	mm = gd_get_mm(a->pid);
	if (!mm)
		return -ESRCH;
	d->table = vzalloc(array_size(a->length >> PAGE_SHIFT, sizeof(*d->table)));
	if (!d->table) {
		err = -ENOMEM;
		goto out;
	}
	d->start = a->start;
	d->npages = a->length >> PAGE_SHIFT;
	d->mode = a->notifier;
	d->node = a->node;
	if (d->mode != GUPDEV_NOTIFIER_NONE) {
		d->mn.ops = &gd_mn_ops;
		err = mmu_notifier_register(&d->mn, mm);
		if (err) {
			vfree(d->table);
			d->table = NULL;
			goto out;
		}
		d->mn_registered = true;
	}
	mmgrab(mm);
	d->mm = mm;
out:
	mmput(mm);
	return err;
}

static long gd_map(struct gd_dev *d, struct gupdev_map *m)
{
	struct gd_gup g = { .d = d };
	struct gd_events before, after;
	long err;

	err = gd_user_range(d, m->start, m->length, &g.first, &g.n);
	if (err)
		return err;
	if (m->reserved || m->flags & ~GUPDEV_MAP_FLAGS_ALL)
		return -EINVAL;
	if (m->flags & GUPDEV_MAP_HONOR_NUMA_FAULT && !(GD_CAPS & GUPDEV_CAP_HONOR_NUMA_FAULT))
		return -EOPNOTSUPP;
	if (m->flags & GUPDEV_MAP_KTHREAD && d->node == NUMA_NO_NODE)
		return -EINVAL;
	g.pin = m->flags & GUPDEV_MAP_PIN_LONGTERM;
	g.keep_ref = d->mode == GUPDEV_NOTIFIER_NONE;
	g.gup_flags = (m->flags & GUPDEV_MAP_WRITE ? FOLL_WRITE : 0) |
		      (m->flags & GUPDEV_MAP_HONOR_NUMA_FAULT ? GD_FOLL_HONOR_NUMA_FAULT : 0) |
		      (g.pin ? FOLL_LONGTERM : 0);
	err = gd_read_events(&before);
	if (err)
		return err;
	err = m->flags & GUPDEV_MAP_KTHREAD ? gd_gup_on_node(&g) : gd_gup_range(&g);
	if (!gd_read_events(&after)) {
		m->hint_faults = after.hint_faults - before.hint_faults;
		m->hint_faults_local = after.hint_faults_local - before.hint_faults_local;
		m->pages_migrated = after.migrated - before.migrated;
	}
	m->mapped = g.mapped;
	m->retries = g.retries;
	spin_lock(&d->lock);
	d->st.hint_faults += m->hint_faults;
	d->st.hint_faults_local += m->hint_faults_local;
	d->st.pages_migrated += m->pages_migrated;
	d->st.map_retries += g.retries;
	spin_unlock(&d->lock);
	return err;
}

static long gd_unmap(struct gd_dev *d, struct gupdev_range *r)
{
	unsigned long first, n;
	long err = gd_user_range(d, r->start, r->length, &first, &n);

	if (err)
		return err;
	spin_lock(&d->lock);
	r->dropped = gd_drop_range(d, first, first + n);
	spin_unlock(&d->lock);
	return 0;
}

static u64 gd_access_page(struct page *page, bool write)
{
	void *kaddr = kmap_local_page(page);
	u64 v = READ_ONCE(*(u64 *)kaddr);

	if (write)
		WRITE_ONCE(*(u8 *)kaddr, (u8)(v + 1));
	kunmap_local(kaddr);
	return v;
}

static long gd_access(struct gd_dev *d, struct gupdev_access *a)
{
	bool write = a->flags & GUPDEV_ACCESS_WRITE;
	unsigned long first, n, i;
	u64 now = ktime_get_ns();
	long err = gd_user_range(d, a->start, a->length, &first, &n);

	if (err)
		return err;
	if (a->reserved || a->flags & ~GUPDEV_ACCESS_WRITE)
		return -EINVAL;
	if (!mmget_not_zero(d->mm))
		return -ESRCH;
	a->accessed = a->stale = a->invalid = a->sum = 0;
	mmap_read_lock(d->mm);
	spin_lock(&d->lock);
	for (i = first; i < first + n; i++) {
		struct gd_entry *e = &d->table[i];
		bool stale;

		/* A read-only entry may be the zero page or a COW source: never written. */
		if (!(e->flags & E_VALID) || (write && !(e->flags & E_WRITE))) {
			a->invalid++;
			continue;
		}
		stale = gd_entry_stale(d->mm, gd_addr(d, i), e->page);
		gd_note_stale(d, e, stale, now);
		a->sum += gd_access_page(e->page, write);
		e->flags |= E_YOUNG;
		a->accessed++;
		a->stale += stale;
	}
	d->st.accesses += a->accessed;
	d->st.stale_accesses += a->stale;
	spin_unlock(&d->lock);
	mmap_read_unlock(d->mm);
	mmput(d->mm);
	return 0;
}

/* Rechecks every valid entry (if the mm still lives) and fills the counters. */
static long gd_stats(struct gd_dev *d, struct gupdev_stats *s)
{
	bool live = d->mm && mmget_not_zero(d->mm);
	u64 now = ktime_get_ns(), valid = 0, pinned = 0, ref = 0, ongoing_ns = 0;
	unsigned long i;

	if (live)
		mmap_read_lock(d->mm);
	spin_lock(&d->lock);
	for (i = 0; d->table && i < d->npages; i++) {
		struct gd_entry *e = &d->table[i];

		if (!(e->flags & E_VALID))
			continue;
		if (live)
			gd_note_stale(d, e, gd_entry_stale(d->mm, gd_addr(d, i), e->page), now);
		valid++;
		pinned += !!(e->flags & E_PIN);
		ref += !!(e->flags & E_REF);
		if (e->flags & E_STALE)
			ongoing_ns += now - e->stale_since;
	}
	*s = d->st;
	s->entries_valid = valid;
	s->entries_pinned = pinned;
	s->entries_ref = ref;
	s->stale_mapping_ns += ongoing_ns;
	s->stale_mappings = d->stale_now;
	spin_unlock(&d->lock);
	if (live) {
		mmap_read_unlock(d->mm);
		mmput(d->mm);
	}
	return 0;
}

static long gd_version(struct gupdev_version *v)
{
	v->abi_version = GUPDEV_ABI_VERSION;
	v->caps = GD_CAPS;
	strscpy(v->release, utsname()->release, sizeof(v->release));
	return 0;
}

union gd_arg {
	struct gupdev_version version;
	struct gupdev_attach attach;
	struct gupdev_map map;
	struct gupdev_range range;
	struct gupdev_access access;
	struct gupdev_stats stats;
};

static long gd_dispatch(struct gd_dev *d, unsigned int cmd, union gd_arg *arg)
{
	switch (cmd) {
	case GUPDEV_IOC_VERSION:
		return gd_version(&arg->version);
	case GUPDEV_IOC_ATTACH:
		return gd_attach(d, &arg->attach);
	case GUPDEV_IOC_MAP:
		return gd_map(d, &arg->map);
	case GUPDEV_IOC_UNMAP:
		return gd_unmap(d, &arg->range);
	case GUPDEV_IOC_ACCESS:
		return gd_access(d, &arg->access);
	case GUPDEV_IOC_STATS:
		return gd_stats(d, &arg->stats);
	}
	return -ENOTTY;
}

static long gd_ioctl(struct file *f, unsigned int cmd, unsigned long uarg)
{
	struct gd_dev *d = f->private_data;
	void __user *up = (void __user *)uarg;
	unsigned int size = _IOC_SIZE(cmd);
	union gd_arg arg;
	long err, cerr = 0;

	if (_IOC_TYPE(cmd) != GUPDEV_IOC_MAGIC || size > sizeof(arg))
		return -ENOTTY;
	memset(&arg, 0, sizeof(arg));
	if (_IOC_DIR(cmd) & _IOC_WRITE && copy_from_user(&arg, up, size))
		return -EFAULT;
	mutex_lock(&d->ioctl_lock);
	err = gd_dispatch(d, cmd, &arg);
	mutex_unlock(&d->ioctl_lock);
	/* A map that failed half way still reports what it mapped and caused. */
	if ((!err || cmd == GUPDEV_IOC_MAP) && _IOC_DIR(cmd) & _IOC_READ &&
	    copy_to_user(up, &arg, size))
		cerr = -EFAULT;
	return err ? err : cerr;
}

static int gd_open(struct inode *inode, struct file *f)
{
	struct gd_dev *d = kzalloc(sizeof(*d), GFP_KERNEL);

	if (!d)
		return -ENOMEM;
	mutex_init(&d->ioctl_lock);
	spin_lock_init(&d->lock);
	d->node = NUMA_NO_NODE;
	f->private_data = d;
	return 0;
}

static int gd_release(struct inode *inode, struct file *f)
{
	struct gd_dev *d = f->private_data;

	if (d->mn_registered)
		mmu_notifier_unregister(&d->mn, d->mm);
	if (d->table) {
		spin_lock(&d->lock);
		gd_drop_range(d, 0, d->npages);
		spin_unlock(&d->lock);
		vfree(d->table);
	}
	if (d->mm)
		mmdrop(d->mm);
	kfree(d);
	return 0;
}

static const struct file_operations gd_fops = {
	.owner = THIS_MODULE,
	.open = gd_open,
	.release = gd_release,
	.unlocked_ioctl = gd_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice gd_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "gupdev",
	.fops = &gd_fops,
	.mode = 0600,
};

static int __init gd_init(void)
{
	/* The ABI: sizes are in the ioctl numbers, and README.md and gupdev.rs state them. */
	BUILD_BUG_ON(sizeof(struct gupdev_version) != 72);
	BUILD_BUG_ON(sizeof(struct gupdev_attach) != 32);
	BUILD_BUG_ON(sizeof(struct gupdev_map) != 64);
	BUILD_BUG_ON(sizeof(struct gupdev_range) != 24);
	BUILD_BUG_ON(sizeof(struct gupdev_access) != 56);
	BUILD_BUG_ON(sizeof(struct gupdev_stats) != 160);
	return misc_register(&gd_misc);
}

static void __exit gd_exit(void)
{
	misc_deregister(&gd_misc);
	WARN_ON(atomic_long_read(&gd_held));
}

module_init(gd_init);
module_exit(gd_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Test device with a secondary MMU for numasim's kernel oracle");
