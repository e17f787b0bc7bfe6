/* busy: a target that never enters the kernel on purpose.
 *
 * usage: busy [INTERVAL_MS]
 *
 * Prints "READY <pid>\n", then spins, reading the time through the vdso
 * (no syscall), and every INTERVAL_MS writes "beat <n> <spins>\n".  The
 * state it checks itself: a value computed in an SSE register across the
 * loop (a corrupted FPU/xstate restore shows up as "BAD" on stdout).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long interval_ms = argc > 1 ? atol(argv[1]) : 10;
	char line[128];
	long n = 0;
	unsigned long long spins = 0;
	volatile double acc = 0.0;
	double step = 0.5;

	int len = snprintf(line, sizeof(line), "READY %d\n", getpid());
	if (write(1, line, len) != len)
		return 1;
	long long next = now_ns() + interval_ms * 1000000LL;
	for (;;) {
		acc += step;
		spins++;
		if ((spins & 1023) == 0) {
			long long t = now_ns();
			if (t >= next) {
				const char *ok = acc == (double)spins * 0.5 ? "ok" : "BAD";
				len = snprintf(line, sizeof(line), "beat %ld %llu %s\n", ++n, spins, ok);
				if (write(1, line, len) != len)
					return 1;
				next = t + interval_ms * 1000000LL;
			}
		}
	}
}
