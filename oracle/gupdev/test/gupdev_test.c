// SPDX-License-Identifier: GPL-2.0
/*
 * /init of a test guest: loads gupdev.ko (the initramfs's /gupdev.ko), then
 *  - GUP table: a 64 MiB buffer first touched on node 0 by a 2-thread owner, one NUMA
 *    scan pass makes it protnone, then the device maps it from node 1 (kernel thread
 *    on the device's node, or the caller's context on node 1) with and without
 *    FOLL_HONOR_NUMA_FAULT: numa_hint_faults / pages migrated deltas;
 *  - stale table: the same buffer mapped by read GUP without the flag, then the owner
 *    mprotect(PROT_NONE)s it; the device accesses it under a smart and an
 *    unconditional notifier;
 *  - young: DAMON (where the kernel has it) ages the buffer while the device uses it;
 *  - bad requests (errno, no oops) and a clean unload (no pages held).
 * Prints one "gupdev-result {json}" line per measurement and "gupdev-done N failed".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../gupdev.h"

#define BUF_PAGES 16384UL
#define PAGE 4096UL
#define BUF_LEN (BUF_PAGES * PAGE)

static int failed;
static unsigned int caps;

static void check(int ok, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("gupdev-check %s: ", ok ? "ok" : "FAIL");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	failed += !ok;
}

static void write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);

	if (fd < 0 || write(fd, value, strlen(value)) < 0)
		printf("gupdev-note cannot write %s: %s\n", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

static long read_long_file(const char *path)
{
	char buf[64] = "";
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return -1;
	if (read(fd, buf, sizeof(buf) - 1) < 0)
		buf[0] = 0;
	close(fd);
	return strtol(buf, NULL, 10);
}

static long vmstat(const char *name)
{
	static char buf[16384];
	int fd = open("/proc/vmstat", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	size_t len = strlen(name);
	char *p;

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	for (p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
		if (!strncmp(p, name, len) && p[len] == ' ')
			return strtol(p + len + 1, NULL, 10);
	return -1;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void pin_to_cpus(int lo, int hi)
{
	cpu_set_t set;
	int c;

	CPU_ZERO(&set);
	for (c = lo; c <= hi; c++)
		CPU_SET(c, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

/* ---- the buffer's owner: a child with two threads on node 0 ---- */

struct owner {
	pid_t pid;
	int cmd;             /* parent -> child */
	int ack;             /* child -> parent */
	uint64_t buf;
};

struct ctl {
	volatile int spin;
	uint64_t buf;
};

static void *spinner(void *arg)
{
	struct ctl *c = arg;

	while (c->spin)
		;
	return NULL;
}

static void owner_main(struct ctl *c, int cmd, int ack)
{
	char *res, *buf, op;
	pthread_t t;
	size_t i;

	pin_to_cpus(0, 1);
	/* Carved out of a PROT_NONE reservation so no neighbour VMA merges with it. */
	res = mmap(NULL, 3 * BUF_LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	buf = res + BUF_LEN;
	mprotect(buf, BUF_LEN, PROT_READ | PROT_WRITE);
	madvise(buf, BUF_LEN, MADV_NOHUGEPAGE);
	for (i = 0; i < BUF_LEN; i += PAGE)
		buf[i] = 1;
	c->buf = (uint64_t)buf;
	pthread_create(&t, NULL, spinner, c);
	if (write(ack, "r", 1) != 1)
		_exit(1);
	spinner(c);
	while (read(cmd, &op, 1) == 1) {
		int r = 0;

		if (op == 'N')
			r = mprotect(buf, BUF_LEN, PROT_NONE);
		else if (op == 'R')
			r = mprotect(buf, BUF_LEN, PROT_READ | PROT_WRITE);
		else if (op == 'U')
			r = munmap(buf, BUF_LEN);
		if (write(ack, r ? "e" : "k", 1) != 1)
			break;
	}
	_exit(0);
}

static struct ctl *ctl_page;

static int owner_start(struct owner *o)
{
	int cp[2], ap[2];
	char a;

	if (pipe(cp) || pipe(ap))
		return -1;
	ctl_page->spin = 1;
	ctl_page->buf = 0;
	o->pid = fork();
	if (!o->pid) {
		close(cp[1]);
		close(ap[0]);
		owner_main(ctl_page, cp[0], ap[1]);
	}
	close(cp[0]);
	close(ap[1]);
	o->cmd = cp[1];
	o->ack = ap[0];
	if (read(o->ack, &a, 1) != 1)
		return -1;
	o->buf = ctl_page->buf;
	return 0;
}

static int owner_do(struct owner *o, char op)
{
	char a = 0;

	if (write(o->cmd, &op, 1) != 1 || read(o->ack, &a, 1) != 1)
		return -1;
	return a == 'k' ? 0 : -1;
}

static void owner_stop(struct owner *o)
{
	close(o->cmd);
	close(o->ack);
	kill(o->pid, SIGKILL);
	waitpid(o->pid, NULL, 0);
}

/* Waits until NUMA scanning has updated the whole buffer, then stops the scanning. */
static long wait_scan_pass(long pte_updates_before)
{
	double t0 = now_s();
	long done = 0;

	while (now_s() - t0 < 120) {
		done = vmstat("numa_pte_updates") - pte_updates_before;
		/* A few pages may be skipped by a pass (docs/ORACLE.md, "The GUP path table"): 99 % will do. */
		if (done >= (long)(BUF_PAGES * 99 / 100))
			break;
		usleep(50000);
	}
	ctl_page->spin = 0;
	usleep(200000);
	printf("gupdev-note scan pass: %ld PTEs updated in %.1f s\n", done, now_s() - t0);
	return done;
}

/* ---- the device ---- */

static int dev_attach(struct owner *o, unsigned int notifier, int node)
{
	struct gupdev_attach a = { .pid = o->pid, .notifier = notifier, .start = o->buf,
				   .length = BUF_LEN, .node = node };
	int fd = open("/dev/gupdev", O_RDWR);

	if (fd < 0)
		return -1;
	if (ioctl(fd, GUPDEV_IOC_ATTACH, &a)) {
		printf("gupdev-note attach: %s\n", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static int dev_map(int fd, struct owner *o, unsigned int flags, struct gupdev_map *m,
		   long *vm_faults)
{
	long before = vmstat("numa_hint_faults");
	int r;

	memset(m, 0, sizeof(*m));
	m->start = o->buf;
	m->length = BUF_LEN;
	m->flags = flags;
	r = ioctl(fd, GUPDEV_IOC_MAP, m);
	*vm_faults = vmstat("numa_hint_faults") - before;
	return r ? -errno : 0;
}

/* One row of the GUP table: faults the device's map takes from node 1. */
static void gup_case(const char *context, unsigned int flags)
{
	long pte_before = vmstat("numa_pte_updates"), vm_faults;
	struct gupdev_map m;
	struct owner o;
	int fd, r, honor = !!(flags & GUPDEV_MAP_HONOR_NUMA_FAULT);

	if (owner_start(&o))
		return check(0, "gup %s: owner", context);
	long scanned = wait_scan_pass(pte_before);

	fd = dev_attach(&o, GUPDEV_NOTIFIER_UNCONDITIONAL, 1);
	if (!(flags & GUPDEV_MAP_KTHREAD))
		pin_to_cpus(2, 3);
	r = fd < 0 ? -ENODEV : dev_map(fd, &o, flags, &m, &vm_faults);
	pin_to_cpus(0, 3);
	if (!r)
		printf("gupdev-result {\"case\":\"gup\",\"context\":\"%s\",\"honor_numa_fault\":%d,"
		       "\"pages\":%lu,\"scanned\":%ld,\"mapped\":%llu,\"hint_faults\":%llu,"
		       "\"hint_faults_local\":%llu,\"pages_migrated\":%llu,\"retries\":%llu,"
		       "\"vmstat_hint_faults\":%ld}\n",
		       context, honor, BUF_PAGES, scanned, m.mapped, m.hint_faults,
		       m.hint_faults_local, m.pages_migrated, m.retries, vm_faults);
	check(!r && m.mapped == BUF_PAGES, "gup %s honor=%d: map %s", context, honor,
	      strerror(-r));
	/* 6.12's read GUP follows protnone PTEs unless told to honour them; 6.1's
	 * GUP always takes the hinting fault. Noise is a few faults, the signal all pages. */
	if (honor || (caps & GUPDEV_CAP_IMPLICIT_NUMA_FAULT))
		check(m.hint_faults > BUF_PAGES * 9 / 10, "gup %s honor=%d takes hinting faults",
		      context, honor);
	else
		check(m.hint_faults < BUF_PAGES / 100, "gup %s honor=0 follows protnone PTEs",
		      context);
	if (fd >= 0)
		close(fd);
	owner_stop(&o);
}

/* One row of the stale table: mprotect(PROT_NONE) under a notifier, then accesses. */
static void stale_case(const char *name, unsigned int notifier)
{
	long pte_before = vmstat("numa_pte_updates"), vm_faults;
	struct gupdev_access acc = { 0 };
	struct gupdev_stats st = { 0 };
	uint64_t stale = 0, accessed = 0;
	struct gupdev_map m;
	struct owner o;
	int fd, r, i;

	if (owner_start(&o))
		return check(0, "stale %s: owner", name);
	wait_scan_pass(pte_before);
	fd = dev_attach(&o, notifier, 1);
	r = fd < 0 ? -ENODEV : dev_map(fd, &o, GUPDEV_MAP_KTHREAD, &m, &vm_faults);
	check(!r && m.mapped == BUF_PAGES, "stale %s: map %s", name, strerror(-r));
	check(!owner_do(&o, 'N'), "stale %s: owner mprotect(PROT_NONE)", name);
	for (i = 0; !r && i < 3; i++) {
		acc = (struct gupdev_access){ .start = o.buf, .length = BUF_LEN };
		r = ioctl(fd, GUPDEV_IOC_ACCESS, &acc) ? -errno : 0;
		accessed += acc.accessed;
		stale += acc.stale;
		usleep(100000);
	}
	check(!r, "stale %s: access %s", name, strerror(-r));
	if (fd >= 0 && !ioctl(fd, GUPDEV_IOC_STATS, &st))
		printf("gupdev-result {\"case\":\"stale\",\"notifier\":\"%s\",\"pages\":%lu,"
		       "\"map_hint_faults\":%llu,\"accesses\":%llu,\"stale.accesses\":%llu,"
		       "\"stale.mappings_max\":%llu,\"stale.mapping_ns\":%llu,"
		       "\"invalidations\":%llu,\"invalidations_protection_vma\":%llu,"
		       "\"entries_dropped\":%llu,\"entries_skipped\":%llu,\"entries_valid\":%llu,"
		       "\"young.secondary_only_protnone\":%llu}\n",
		       name, BUF_PAGES, m.hint_faults, st.accesses, st.stale_accesses,
		       st.stale_mappings_max, st.stale_mapping_ns, st.invalidations,
		       st.invalidations_protection_vma, st.entries_dropped, st.entries_skipped,
		       st.entries_valid, st.young_secondary_only_protnone);
	check(st.accesses == accessed && st.stale_accesses == stale, "stale %s: stats agree",
	      name);
	/* Only a smart notifier over entries mapped through protnone PTEs (6.12) goes stale. */
	if (notifier == GUPDEV_NOTIFIER_SMART && (caps & GUPDEV_CAP_HONOR_NUMA_FAULT))
		check(stale == 3 * BUF_PAGES && st.stale_mappings_max == BUF_PAGES,
		      "stale %s: every access after mprotect(PROT_NONE) is stale", name);
	else
		check(!stale && !st.stale_mappings_max, "stale %s: no stale access", name);
	if (fd >= 0)
		close(fd);
	owner_stop(&o);
}

/* ---- page aging through DAMON (6.12 has it; Debian's 6.1 is built without) ---- */

#define DAMON "/sys/kernel/mm/damon/admin/kdamonds/0"

static void damon_start(pid_t pid)
{
	char spid[16];

	snprintf(spid, sizeof(spid), "%d", pid);
	write_file("/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds", "1");
	write_file(DAMON "/contexts/nr_contexts", "1");
	write_file(DAMON "/contexts/0/operations", "vaddr");
	write_file(DAMON "/contexts/0/monitoring_attrs/intervals/sample_us", "5000");
	write_file(DAMON "/contexts/0/monitoring_attrs/intervals/aggr_us", "100000");
	write_file(DAMON "/contexts/0/targets/nr_targets", "1");
	write_file(DAMON "/contexts/0/targets/0/pid_target", spid);
	write_file(DAMON "/state", "on");
}

/*
 * DAMON's vaddr sampling ages pages through ptep_clear_young_notify() and
 * mmu_notifier_test_young(): the device answers from its accessed bits. Its entries
 * were mapped through protnone PTEs (6.12 read GUP) and it keeps using them, so pages
 * are young only through the device while NUMA balancing sees nothing.
 */
static void young_case(void)
{
	long pte_before = vmstat("numa_pte_updates"), vm_faults;
	struct gupdev_access acc;
	struct gupdev_stats st = { 0 };
	struct gupdev_map m;
	struct owner o;
	int fd, r, i;

	if (access("/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds", W_OK)) {
		printf("gupdev-note no DAMON sysfs: page aging through the device not measured\n");
		return;
	}
	if (owner_start(&o))
		return check(0, "young: owner");
	wait_scan_pass(pte_before);
	fd = dev_attach(&o, GUPDEV_NOTIFIER_UNCONDITIONAL, 1);
	r = fd < 0 ? -ENODEV : dev_map(fd, &o, GUPDEV_MAP_KTHREAD, &m, &vm_faults);
	check(!r && m.mapped == BUF_PAGES, "young: map %s", strerror(-r));
	if (!r) {
		damon_start(o.pid);
		for (i = 0; i < 40; i++) {
			acc = (struct gupdev_access){ .start = o.buf, .length = BUF_LEN };
			ioctl(fd, GUPDEV_IOC_ACCESS, &acc);
			usleep(50000);
		}
		write_file(DAMON "/state", "off");
		ioctl(fd, GUPDEV_IOC_STATS, &st);
		printf("gupdev-result {\"case\":\"young\",\"pages\":%lu,\"map_hint_faults\":%llu,"
		       "\"young_clear_calls\":%llu,\"young_test_calls\":%llu,\"young_answered\":%llu,"
		       "\"young.secondary_only_protnone\":%llu,\"stale.accesses\":%llu}\n",
		       BUF_PAGES, m.hint_faults, st.young_clear_calls, st.young_test_calls,
		       st.young_answered, st.young_secondary_only_protnone, st.stale_accesses);
		check(st.young_clear_calls && st.young_answered, "young: DAMON asked the device");
		if (caps & GUPDEV_CAP_HONOR_NUMA_FAULT)
			check(st.young_secondary_only_protnone > 0,
			      "young: pages young only through the device while protnone");
	}
	if (fd >= 0)
		close(fd);
	owner_stop(&o);
}

/* ---- bad requests ---- */

static void expect_errno(int r, int want, const char *what)
{
	check(r == -1 && errno == want, "%s -> %s (got %s)", what, strerror(want),
	      r ? strerror(errno) : "success");
}

static void bad_requests(void)
{
	struct gupdev_attach a = { .length = BUF_LEN, .node = 1 };
	struct gupdev_map m = { 0 };
	struct gupdev_access acc = { 0 };
	struct gupdev_range hole;
	struct owner o;
	int fd = open("/dev/gupdev", O_RDWR), fd2, r;
	char *mine;

	expect_errno(ioctl(fd, GUPDEV_IOC_MAP, &m), ENOTCONN, "map before attach");
	a.pid = 999999;
	a.start = 0x10000000;
	expect_errno(ioctl(fd, GUPDEV_IOC_ATTACH, &a), ESRCH, "attach to no such pid");
	a.pid = 0;
	a.start = 0x10000001;
	expect_errno(ioctl(fd, GUPDEV_IOC_ATTACH, &a), EINVAL, "attach unaligned");
	a.start = 0x10000000;
	a.node = 7;
	expect_errno(ioctl(fd, GUPDEV_IOC_ATTACH, &a), EINVAL, "attach offline node");
	a.node = 1;
	a.notifier = GUPDEV_NOTIFIER_SMART;
	check(!ioctl(fd, GUPDEV_IOC_ATTACH, &a), "attach own mm, unmapped window");
	expect_errno(ioctl(fd, GUPDEV_IOC_ATTACH, &a), EBUSY, "double attach");
	m = (struct gupdev_map){ .start = a.start, .length = PAGE };
	expect_errno(ioctl(fd, GUPDEV_IOC_MAP, &m), EFAULT, "map a range outside the mm's VMAs");
	m.start = a.start + BUF_LEN;
	expect_errno(ioctl(fd, GUPDEV_IOC_MAP, &m), EINVAL, "map outside the window");
	m.start = a.start;
	m.flags = 1u << 9;
	expect_errno(ioctl(fd, GUPDEV_IOC_MAP, &m), EINVAL, "map unknown flag");
	if (!(caps & GUPDEV_CAP_HONOR_NUMA_FAULT)) {
		m.flags = GUPDEV_MAP_HONOR_NUMA_FAULT;
		expect_errno(ioctl(fd, GUPDEV_IOC_MAP, &m), EOPNOTSUPP,
			     "FOLL_HONOR_NUMA_FAULT on a kernel without it");
	}
	expect_errno(ioctl(fd, _IO(GUPDEV_IOC_MAGIC, 42)), ENOTTY, "unknown ioctl");
	close(fd);

	/* The owner exits with pinned and referenced entries still in the table. */
	if (owner_start(&o))
		return check(0, "exit case: owner");
	ctl_page->spin = 0;
	fd = dev_attach(&o, GUPDEV_NOTIFIER_NONE, 1);
	fd2 = dev_attach(&o, GUPDEV_NOTIFIER_UNCONDITIONAL, 0);
	m = (struct gupdev_map){ .start = o.buf, .length = BUF_LEN / 2 };
	check(fd >= 0 && !ioctl(fd, GUPDEV_IOC_MAP, &m), "map with references, no notifier");
	m = (struct gupdev_map){ .start = o.buf + BUF_LEN / 2, .length = BUF_LEN / 2,
				 .flags = GUPDEV_MAP_PIN_LONGTERM | GUPDEV_MAP_WRITE };
	check(fd >= 0 && !ioctl(fd, GUPDEV_IOC_MAP, &m), "long-term write pin");
	m = (struct gupdev_map){ .start = o.buf, .length = BUF_LEN,
				 .flags = GUPDEV_MAP_PIN_LONGTERM | GUPDEV_MAP_KTHREAD };
	check(fd2 >= 0 && !ioctl(fd2, GUPDEV_IOC_MAP, &m), "long-term pin from node 0 kthread");
	check(read_long_file("/sys/module/gupdev/parameters/held_pages") == (long)(2 * BUF_PAGES),
	      "held_pages counts refs and pins (%ld)",
	      read_long_file("/sys/module/gupdev/parameters/held_pages"));
	owner_stop(&o);
	usleep(100000);
	m = (struct gupdev_map){ .start = o.buf, .length = PAGE };
	expect_errno(ioctl(fd, GUPDEV_IOC_MAP, &m), ESRCH, "map after the process exited");
	acc = (struct gupdev_access){ .start = o.buf, .length = PAGE };
	expect_errno(ioctl(fd2, GUPDEV_IOC_ACCESS, &acc), ESRCH, "access after the process exited");
	close(fd);
	close(fd2);

	/* The caller's own mm, caller context, write GUP and write access; no NUMA scan
	 * of this process may invalidate the entries meanwhile. */
	write_file("/proc/sys/kernel/numa_balancing", "0");
	mine = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(mine, 0, 64 * PAGE);
	a = (struct gupdev_attach){ .pid = 0, .notifier = GUPDEV_NOTIFIER_UNCONDITIONAL,
				    .start = (uint64_t)mine, .length = 64 * PAGE, .node = -1 };
	fd = open("/dev/gupdev", O_RDWR);
	check(!ioctl(fd, GUPDEV_IOC_ATTACH, &a), "attach own mm");
	m = (struct gupdev_map){ .start = a.start, .length = a.length, .flags = GUPDEV_MAP_WRITE };
	check(!ioctl(fd, GUPDEV_IOC_MAP, &m) && m.mapped == 64, "write map own mm");
	check(!ioctl(fd, GUPDEV_IOC_MAP, &m) && m.mapped == 0, "map again: valid entries kept");
	acc = (struct gupdev_access){ .start = a.start, .length = a.length,
				      .flags = GUPDEV_ACCESS_WRITE };
	r = ioctl(fd, GUPDEV_IOC_ACCESS, &acc);
	check(!r && acc.accessed == 64 && !acc.stale && mine[0] == 1 && mine[63 * PAGE] == 1,
	      "device writes land in the process (accessed %llu, first byte %d)", acc.accessed,
	      mine[0]);
	munmap(mine, 32 * PAGE);
	acc.flags = 0;
	r = ioctl(fd, GUPDEV_IOC_ACCESS, &acc);
	check(!r && acc.accessed == 32 && acc.invalid == 32,
	      "munmap invalidates (accessed %llu invalid %llu)", acc.accessed, acc.invalid);
	hole = (struct gupdev_range){ .start = a.start + 48 * PAGE, .length = 16 * PAGE };
	m = (struct gupdev_map){ .start = a.start + 32 * PAGE, .length = 32 * PAGE };
	r = ioctl(fd, GUPDEV_IOC_UNMAP, &hole) || ioctl(fd, GUPDEV_IOC_MAP, &m);
	check(!r && hole.dropped == 16 && m.mapped == 16,
	      "unmap then map refills only the hole (dropped %llu, mapped %llu)", hole.dropped,
	      m.mapped);
	close(fd);
	check(read_long_file("/sys/module/gupdev/parameters/held_pages") == 0,
	      "no pages held after close");
	write_file("/proc/sys/vm/stat_refresh", "1"); /* folds the per-CPU counter deltas */
	check(vmstat("nr_foll_pin_acquired") == vmstat("nr_foll_pin_released"),
	      "pins balanced (%ld acquired, %ld released)", vmstat("nr_foll_pin_acquired"),
	      vmstat("nr_foll_pin_released"));
}

/* /extra, if the initramfs has one (boot.sh's GUPDEV_EXTRA): another program using the
 * device, e.g. a check of the Rust bindings; its exit status is one check. */
static void run_extra(void)
{
	int status = -1;
	pid_t pid;

	if (access("/extra", X_OK))
		return;
	pid = fork();
	if (!pid) {
		execl("/extra", "/extra", (char *)NULL);
		_exit(127);
	}
	waitpid(pid, &status, 0);
	check(WIFEXITED(status) && !WEXITSTATUS(status), "/extra exit status %d", status);
}

static int load_module(void)
{
	struct gupdev_version v = { 0 };
	int fd = open("/gupdev.ko", O_RDONLY), dev, i;

	if (fd < 0 || syscall(SYS_finit_module, fd, "", 0)) {
		printf("gupdev-note finit_module: %s\n", strerror(errno));
		return -1;
	}
	close(fd);
	for (i = 0; i < 50 && (dev = open("/dev/gupdev", O_RDWR)) < 0; i++)
		usleep(20000);
	if (dev < 0 || ioctl(dev, GUPDEV_IOC_VERSION, &v))
		return -1;
	close(dev);
	caps = v.caps;
	printf("gupdev-result {\"case\":\"version\",\"abi\":%u,\"caps\":%u,\"release\":\"%s\"}\n",
	       v.abi_version, v.caps, v.release);
	return 0;
}

static void setup(void)
{
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	write_file("/sys/kernel/mm/transparent_hugepage/enabled", "never");
	write_file("/proc/sys/kernel/numa_balancing", "1");
	write_file("/sys/kernel/debug/sched/numa_balancing/scan_delay_ms", "0");
	write_file("/sys/kernel/debug/sched/numa_balancing/scan_period_min_ms", "100");
	ctl_page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
}

int main(void)
{
	setup();
	if (load_module()) {
		check(0, "load gupdev.ko");
	} else {
		gup_case("kthread", GUPDEV_MAP_KTHREAD);
		gup_case("caller", 0);
		if (caps & GUPDEV_CAP_HONOR_NUMA_FAULT) {
			gup_case("kthread", GUPDEV_MAP_KTHREAD | GUPDEV_MAP_HONOR_NUMA_FAULT);
			gup_case("caller", GUPDEV_MAP_HONOR_NUMA_FAULT);
		}
		stale_case("smart", GUPDEV_NOTIFIER_SMART);
		stale_case("unconditional", GUPDEV_NOTIFIER_UNCONDITIONAL);
		young_case();
		bad_requests();
		run_extra();
		int r = syscall(SYS_delete_module, "gupdev", O_NONBLOCK);

		check(!r, "rmmod gupdev: %s", r ? strerror(errno) : "unloaded");
	}
	printf("gupdev-done %d failed\n", failed);
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
