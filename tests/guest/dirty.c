// SPDX-License-Identifier: GPL-2.0
/*
 * dirty - leave free memory that is not zero behind in the guest.
 *
 * Usage: dirty MIB
 *
 * Fills MIB MiB of anonymous memory with a non-zero pattern and exits, which
 * frees it. A migration must send such pages in full (a zero page costs a
 * few bytes), unless the guest hinted them as free.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	size_t len;
	char *p;

	if (argc != 2 || atol(argv[1]) <= 0) {
		fprintf(stderr, "usage: dirty MIB\n");
		return 2;
	}
	len = (size_t)atol(argv[1]) << 20;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(p, 0xa5, len);
	return 0;
}
