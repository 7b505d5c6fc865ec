// SPDX-License-Identifier: GPL-2.0
/*
 * dirty - leave free memory that is not zero behind in the guest.
 *
 * Usage: dirty MIB [hold]
 *
 * Fills MIB MiB of anonymous memory with a non-zero pattern and exits, which
 * frees it. A migration must send such pages in full (a zero page costs a
 * few bytes), unless the guest hinted them as free. With "hold" it prints
 * "ready" once every byte is written and keeps the memory until it is
 * killed: a process that needed that much memory and has it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t len;
	char *p;

	if (argc < 2 || argc > 3 || atol(argv[1]) <= 0 ||
	    (argc == 3 && strcmp(argv[2], "hold"))) {
		fprintf(stderr, "usage: dirty MIB [hold]\n");
		return 2;
	}
	len = (size_t)atol(argv[1]) << 20;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(p, 0xa5, len);
	if (argc == 3) {
		printf("ready\n");
		fflush(stdout);
		for (;;)
			pause();
	}
	return 0;
}
