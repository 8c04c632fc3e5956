// SPDX-License-Identifier: GPL-2.0
/*
 * gupdev's GUP: fills the secondary page table through get/pin_user_pages_remote() with
 * the flags asked for, in the caller's context or from a kernel thread on the device's
 * node, and reports the hinting faults the calls caused.
 */
#include <linux/cpumask.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <linux/vmstat.h>

#include "gupdev_internal.h"

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 5, 0)
#define gd_gup_remote(mm, start, n, flags, pages, locked) \
	get_user_pages_remote(mm, start, n, flags, pages, NULL, locked)
#define gd_pup_remote(mm, start, n, flags, pages, locked) \
	pin_user_pages_remote(mm, start, n, flags, pages, NULL, locked)
#else
#define gd_gup_remote get_user_pages_remote
#define gd_pup_remote pin_user_pages_remote
#endif

#define GD_BATCH 512
#define GD_MAX_RETRIES 16

struct gd_gup {
	struct gd_dev *d;
	unsigned long first;       /* window index */
	unsigned long n;
	unsigned int gup_flags;
	bool pin;
	bool keep_ref;
	u64 mapped;
	u64 retries;
	u64 faulted;               /* protnone PTEs the GUP calls made accessible */
	long err;
	struct completion done;
};

/* Installs a GUP batch unless an invalidation raced it; false: redo the batch. */
static bool gd_install(struct gd_gup *g, unsigned long idx, struct page **pages, long got,
		       u64 seq)
{
	struct gd_dev *d = g->d;
	u32 hold = g->pin ? E_PIN : g->keep_ref ? E_REF : 0;
	long i;

	spin_lock(&d->lock);
	if (d->inval_active || d->inval_seq != seq) {
		spin_unlock(&d->lock);
		return false;
	}
	for (i = 0; i < got; i++) {
		struct gd_entry *e = &d->table[idx + i];

		if (e->flags & E_ZAPPED)
			d->st.entries_refilled++;
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
	unsigned long before, after;

	mmap_read_lock(mm);
	/*
	 * A hinting fault leaves the PTE accessible (do_numa_page() restores or migrates it);
	 * a followed protnone PTE stays protnone. So protnone PTEs that turned accessible over
	 * the call are the faults it took (another toucher of the same pages would count too).
	 */
	before = gd_count_protnone(mm, addr, n);
	if (g->pin)
		got = gd_pup_remote(mm, addr, n, g->gup_flags, pages, NULL);
	else
		got = gd_gup_remote(mm, addr, n, g->gup_flags, pages, NULL);
	after = gd_count_protnone(mm, addr, n);
	mmap_read_unlock(mm);
	if (before > after)
		g->faulted += before - after;
	return got ? got : -EFAULT;
}

/*
 * Skips valid entries from *idx and returns how many invalid ones follow (a batch at
 * most), with the invalidation count to install them against. Entries only turn valid
 * here, under the device's ioctl lock, so the hole stays a hole until installed.
 */
static unsigned long gd_next_hole(struct gd_dev *d, unsigned long *idx, unsigned long end,
				  u64 *seq)
{
	unsigned long n = 0;

	spin_lock(&d->lock);
	while (*idx < end && d->table[*idx].flags & E_VALID)
		(*idx)++;
	while (*idx + n < end && n < GD_BATCH && !(d->table[*idx + n].flags & E_VALID))
		n++;
	*seq = d->inval_seq;
	spin_unlock(&d->lock);
	return n;
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
		unsigned long n;
		long got;
		u64 seq;

		n = gd_next_hole(d, &idx, end, &seq);
		if (!n)
			break;
		got = gd_gup_batch(g, d->mm, idx, n, pages);
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
	unsigned long hint_faults_local, migrated;
};

static int gd_read_events(struct gd_events *ev)
{
	unsigned long *all = kcalloc(NR_VM_EVENT_ITEMS, sizeof(*all), GFP_KERNEL);

	if (!all)
		return -ENOMEM;
	all_vm_events(all);
#ifdef CONFIG_NUMA_BALANCING
	ev->hint_faults_local = all[NUMA_HINT_FAULTS_LOCAL];
	ev->migrated = all[NUMA_PAGE_MIGRATE];
#else
	memset(ev, 0, sizeof(*ev));
#endif
	kfree(all);
	return 0;
}

long gd_map(struct gd_dev *d, struct gupdev_map *m)
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
		m->hint_faults_local = after.hint_faults_local - before.hint_faults_local;
		m->pages_migrated = after.migrated - before.migrated;
	}
	m->hint_faults = g.faulted;
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
