// SPDX-License-Identifier: GPL-2.0
/*
 * gupdev: a test device with a secondary MMU, for numasim's kernel oracle.
 *
 * One open file of /dev/gupdev is one device: it attaches to one mm, keeps a
 * "secondary page table" (an array of struct page * with valid/write/young bits)
 * over a window of that mm, fills it through GUP with the flags user space asks
 * for, keeps it coherent (or not) through an MMU notifier, and accesses memory
 * through it on command, counting accesses through stale entries. The ABI is in
 * gupdev.h, what the module can and cannot tell in README.md. This file is the
 * device (files, ioctls); gupdev_smmu.c the table and its MMU notifier; gupdev_gup.c
 * the GUP that fills it.
 *
 * Builds against 6.1 (Debian 6.1.0-NN) and 6.12 headers: the differences are the
 * GUP signatures (vmas argument gone in 6.5) and FOLL_HONOR_NUMA_FAULT (6.5+,
 * detected by Kbuild, not by version number: a backport would carry it).
 */
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/sched/mm.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/utsname.h>
#include <linux/vmalloc.h>

#include "gupdev_internal.h"

/* ---- ioctls ---- */

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
	/* The ABI: sizes are in the ioctl numbers, and README.md and guest/src/gupdev.rs state them. */
	BUILD_BUG_ON(sizeof(struct gupdev_version) != 72);
	BUILD_BUG_ON(sizeof(struct gupdev_attach) != 32);
	BUILD_BUG_ON(sizeof(struct gupdev_map) != 64);
	BUILD_BUG_ON(sizeof(struct gupdev_range) != 24);
	BUILD_BUG_ON(sizeof(struct gupdev_access) != 56);
	BUILD_BUG_ON(sizeof(struct gupdev_stats) != 192);
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
