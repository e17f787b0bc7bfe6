"""C sources of small test programs shared by several test files (built with cbuild)."""

HOG_C = r"""
/* Holds N MiB of pseudo-random memory (a big image), then waits. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 64, n = mib << 17;
	uint64_t *p = malloc(n * 8), x = 88172645463325252ULL;
	for (size_t i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; p[i] = x; }
	FILE *f = fopen("hog.ready", "w"); fclose(f);
	for (;;) pause();
}
"""
