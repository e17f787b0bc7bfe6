/*
 * The container's CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from where they
 * were at the dump: the time the container was down does not count.  With
 * argument D (seconds the runner keeps the container down), monotonic time
 * must have advanced at least D - 0.5 s less than real time.  A thread
 * sleeping until an absolute CLOCK_MONOTONIC deadline wakes at that
 * deadline as the container sees it, not early.
 */
#include "zdtmlib.h"
#include <pthread.h>
#include <time.h>

static struct timespec deadline;
static volatile double woke;

static double ts(const struct timespec *t) { return t->tv_sec + t->tv_nsec / 1e9; }

static double clk(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return ts(&t);
}

static void *sleeper(void *arg)
{
	(void)arg;
	int rc;
	while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL)) == EINTR)
		;
	if (rc)
		fail("clock_nanosleep: %d", rc);
	woke = clk(CLOCK_MONOTONIC);
	return NULL;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	double down = argc > 1 ? atof(argv[1]) : 0;
	double mono0 = clk(CLOCK_MONOTONIC), boot0 = clk(CLOCK_BOOTTIME), real0 = clk(CLOCK_REALTIME);
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += 3;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	pthread_t th;
	pthread_create(&th, NULL, sleeper, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	test_ready();
	test_waitsig();

	double mono1 = clk(CLOCK_MONOTONIC), boot1 = clk(CLOCK_BOOTTIME), real1 = clk(CLOCK_REALTIME);
	double dm = mono1 - mono0, db = boot1 - boot0, dr = real1 - real0;
	char offs[256] = "";
	int fd = open("/proc/self/timens_offsets", O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, offs, sizeof(offs) - 1);
		offs[n > 0 ? n : 0] = 0;
		close(fd);
	}
	test_msg("monotonic +%.3f s, boottime +%.3f s, realtime +%.3f s; offsets:\n%s", dm, db, dr, offs);
	if (dm < 0 || db < 0)
		fail("a clock went back: monotonic %+.3f boottime %+.3f", dm, db);
	if (dm > dr + 0.1)
		fail("monotonic (%+.3f) ran ahead of realtime (%+.3f)", dm, dr);
	if (db - dm > 0.1 || dm - db > 0.1)
		fail("boottime (%+.3f) and monotonic (%+.3f) drifted apart", db, dm);
	if (down > 0 && dr - dm < down - 0.5)
		fail("the %.1f s the container was down were counted: monotonic %+.3f realtime %+.3f",
		     down, dm, dr);

	pthread_join(th, NULL);
	double late = woke - ts(&deadline);
	test_msg("absolute sleep woke %.3f s after its deadline\n", late);
	if (late < 0)
		fail("absolute sleep woke %.3f s before its deadline", -late);
	if (late > 1.0)
		fail("absolute sleep woke %.3f s after its deadline", late);
	pass();
}
