// SPDX-License-Identifier: GPL-2.0
/*
 * Compaction migrates balloon pages, and a deflated balloon gives every page
 * back.
 *
 * Drives the simulated balloon of samples/rust/rust_balloon_sim.rs (load it
 * first; the test is skipped without it): pins anonymous memory with a hole
 * every third page, inflates the balloon into most of the free memory (it
 * takes the holes first), releases the rest so that free pages lie between
 * balloon pages, and compacts memory through /proc/sys/vm/compact_memory.
 * Not every other page: compaction's free scanner doubles its stride, up to
 * 32 pages, over pageblocks where it finds nothing, so with a period of two
 * it could step over every free page, and migrate nothing (about one boot in
 * three did). A period of three meets free pages at any power-of-two stride.
 * Proactive compaction is off meanwhile: kcompactd would otherwise compact
 * the freed memory on its own, before or during the test's run.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../kselftest.h"

#define SIM "/sys/kernel/debug/rust_balloon_sim/"
/* Free memory may move by this much on its own (slab, page tables). */
#define FREE_SLACK_KB (16 * 1024)

static long page_kb;

static int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	if (n < 0)
		n = -errno;
	close(fd);
	return n < 0 ? n : 0;
}

/* The value after "key" in a file of "key value" (or "key: value kB") lines. */
static long read_key(const char *path, const char *key)
{
	char line[256];
	size_t len = strlen(key);
	long val = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		ksft_exit_fail_msg("open %s: %s\n", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, key, len) &&
		    (line[len] == ' ' || line[len] == ':')) {
			val = strtol(line + len + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	if (val < 0)
		ksft_exit_fail_msg("no %s in %s\n", key, path);
	return val;
}

static long read_vmstat(const char *key)
{
	if (write_file("/proc/sys/vm/stat_refresh", "1"))
		ksft_exit_fail_msg("stat_refresh: %s\n", strerror(errno));
	return read_key("/proc/vmstat", key);
}

/* MemFree plus the pages parked on the per-CPU lists, which it leaves out. */
static long free_kb(void)
{
	char line[256];
	long pcp = 0, count;
	FILE *f = fopen("/proc/zoneinfo", "r");

	if (!f)
		ksft_exit_fail_msg("open /proc/zoneinfo: %s\n", strerror(errno));
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, " count: %ld", &count) == 1)
			pcp += count;
	fclose(f);
	return read_key("/proc/meminfo", "MemFree") + pcp * page_kb;
}

#define PROACTIVENESS "/proc/sys/vm/compaction_proactiveness"
static char proactiveness[16];

static void restore_proactiveness(void)
{
	write_file(PROACTIVENESS, proactiveness);
}

/* Turns proactive compaction off until the test exits. */
static void stop_proactive_compaction(void)
{
	FILE *f = fopen(PROACTIVENESS, "r");
	int ret;

	if (!f)
		ksft_exit_skip("no %s (no compaction)\n", PROACTIVENESS);
	if (!fgets(proactiveness, sizeof(proactiveness), f))
		ksft_exit_fail_msg("read %s: %s\n", PROACTIVENESS, strerror(errno));
	fclose(f);
	ret = write_file(PROACTIVENESS, "0");
	if (ret)
		ksft_exit_fail_msg("write %s: %s\n", PROACTIVENESS, strerror(-ret));
	atexit(restore_proactiveness);
}

static void set_target(long pages)
{
	char buf[32];
	int ret;

	snprintf(buf, sizeof(buf), "%ld\n", pages);
	ret = write_file(SIM "target", buf);
	if (ret)
		ksft_exit_fail_msg("resize balloon to %ld: %s\n", pages,
				   strerror(-ret));
}

int main(void)
{
	long total0, free0, size, nr_before, migrate_before, sim_before;
	long migrated, hold_kb;
	size_t len, off;
	char *p;

	page_kb = sysconf(_SC_PAGESIZE) / 1024;
	ksft_print_header();
	if (access(SIM "target", W_OK))
		ksft_exit_skip("no simulated balloon (load rust_balloon_sim)\n");
	if (read_key(SIM "stats", "pages") != 0)
		ksft_exit_skip("the simulated balloon is in use\n");
	ksft_set_plan(6);
	stop_proactive_compaction();

	total0 = read_key("/proc/meminfo", "MemTotal");
	free0 = free_kb();

	/* Hold 60 % of the available memory, with a hole every third page. */
	hold_kb = read_key("/proc/meminfo", "MemAvailable") * 6 / 10;
	len = (size_t)hold_kb * 1024;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		ksft_exit_fail_perror("mmap");
	madvise(p, len, MADV_NOHUGEPAGE);
	for (off = 0; off < len; off += page_kb * 1024)
		p[off] = 1;
	for (off = 0; off < len; off += 3 * page_kb * 1024)
		if (madvise(p + off, page_kb * 1024, MADV_DONTNEED))
			ksft_exit_fail_perror("madvise");

	/* Inflate into most of what is free; the balloon keeps a reserve. */
	set_target(read_key("/proc/meminfo", "MemFree") / page_kb);
	size = read_key(SIM "stats", "pages");
	ksft_print_msg("balloon inflated to %ld pages\n", size);
	/*
	 * Counted from before the held memory is freed: whatever compacts
	 * it from then on (kcompactd woken by reclaim, say) counts too.
	 */
	nr_before = read_vmstat("nr_balloon_pages");
	migrate_before = read_vmstat("balloon_migrate");
	sim_before = read_key(SIM "stats", "migrated");
	munmap(p, len);
	if (write_file("/proc/sys/vm/compact_memory", "1"))
		ksft_exit_fail_msg("compact_memory: %s\n", strerror(errno));
	migrated = read_vmstat("balloon_migrate") - migrate_before;
	ksft_print_msg("compaction migrated %ld balloon pages\n", migrated);

	ksft_test_result(migrated > 0, "compaction migrated balloon pages\n");
	ksft_test_result(read_key(SIM "stats", "migrated") - sim_before == migrated,
			 "the balloon's host saw every migration\n");
	ksft_test_result(read_vmstat("nr_balloon_pages") == nr_before &&
			 read_key(SIM "stats", "pages") == size,
			 "migration left the balloon's size alone\n");

	set_target(0);
	ksft_test_result(read_vmstat("nr_balloon_pages") == 0 &&
			 read_key(SIM "stats", "pages") == 0,
			 "deflated balloon is empty\n");
	ksft_test_result(read_key("/proc/meminfo", "MemTotal") == total0,
			 "MemTotal is back\n");
	ksft_test_result(labs(free_kb() - free0) < FREE_SLACK_KB,
			 "free memory is back (%ld kB, was %ld kB)\n",
			 free_kb(), free0);
	ksft_finished();
}
