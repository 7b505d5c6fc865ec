// SPDX-License-Identifier: GPL-2.0
/*
 * fragment - leave free pages scattered between held ones in the guest.
 *
 * Usage: fragment MIB
 *
 * Touches MIB MiB of anonymous memory (no THP), gives every third page
 * back with MADV_DONTNEED, prints "ready" and waits until it is killed.
 * A balloon inflated meanwhile takes the order-0 holes first; once this
 * process exits, its pages free up between the balloon pages, which gives
 * compaction balloon pages to migrate. Every third, not every other: see
 * tools/testing/selftests/balloon/balloon_compaction.c for why a period of
 * two can hide every free page from compaction.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t len, off;
	char *p;

	if (argc != 2 || atol(argv[1]) <= 0) {
		fprintf(stderr, "usage: fragment MIB\n");
		return 2;
	}
	len = (size_t)atol(argv[1]) << 20;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	madvise(p, len, MADV_NOHUGEPAGE);
	for (off = 0; off < len; off += page)
		p[off] = 1;
	for (off = 0; off < len; off += 3 * page) {
		if (madvise(p + off, page, MADV_DONTNEED)) {
			perror("madvise");
			return 1;
		}
	}
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}
