/* sleeper: a target that sleeps in clock_nanosleep and reports each wake-up.
 *
 * usage: sleeper [INTERVAL_MS]
 *
 * Prints "READY <pid> <sigusr1-handler> <sigtrap-handler>\n" once, then after
 * every sleep "beat <n> <ret> <elapsed_ns> <usr1_count>\n" on stdout, where ret
 * is clock_nanosleep's return value (0, or an errno such as EINTR) and
 * elapsed_ns the CLOCK_MONOTONIC time the sleep took.  A correctly restarted
 * sleep has ret 0 and elapsed_ns >= INTERVAL_MS * 1e6.
 *
 * State for the tests to check from outside: SIGUSR1 has a handler
 * (SA_RESTART, sa_mask = {SIGTERM}), SIGTRAP has a handler, SIGUSR2 is
 * blocked.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1_count;

static void on_usr1(int sig) { (void)sig; usr1_count++; }
static void on_trap(int sig) { (void)sig; }

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long interval_ms = argc > 1 ? atol(argv[1]) : 10;
	struct sigaction sa;
	sigset_t block;
	char line[128];
	long n = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_trap;
	sa.sa_flags = 0;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTRAP, &sa, NULL);

	sigemptyset(&block);
	sigaddset(&block, SIGUSR2);
	sigprocmask(SIG_BLOCK, &block, NULL);

	int len = snprintf(line, sizeof(line), "READY %d %#lx %#lx\n", getpid(),
			   (unsigned long)on_usr1, (unsigned long)on_trap);
	if (write(1, line, len) != len)
		return 1;

	for (;;) {
		struct timespec req = {
			.tv_sec = interval_ms / 1000,
			.tv_nsec = (interval_ms % 1000) * 1000000L,
		};
		long long t0 = now_ns();
		int ret = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL);
		long long dt = now_ns() - t0;
		len = snprintf(line, sizeof(line), "beat %ld %d %lld %d\n", ++n, ret, dt,
			       (int)usr1_count);
		if (write(1, line, len) != len)
			return 1;
	}
}
