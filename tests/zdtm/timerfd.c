/* timerfd: remaining times on MONOTONIC, BOOTTIME (absolute) and REALTIME (absolute,
 * cancel-on-set) clocks, expirations not read yet (one-shot and periodic), flags, and a
 * timer that fires after restore when its remaining time says. */
#include "zdtmlib.h"
#include <poll.h>
#include <stdint.h>
#include <sys/timerfd.h>
#include <time.h>

static double now(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double remaining(int fd, double *interval)
{
	struct itimerspec cur;
	if (timerfd_gettime(fd, &cur)) fail("timerfd_gettime");
	if (interval) *interval = cur.it_interval.tv_sec + cur.it_interval.tv_nsec / 1e9;
	return cur.it_value.tv_sec + cur.it_value.tv_nsec / 1e9;
}

static int mk(clockid_t c, int flags, int sflags, double value, double interval)
{
	int fd = timerfd_create(c, flags);
	if (fd < 0) fail("timerfd_create %d", c);
	struct itimerspec its = {
		.it_value = {(time_t)value, (long)((value - (time_t)value) * 1e9)},
		.it_interval = {(time_t)interval, (long)((interval - (time_t)interval) * 1e9)},
	};
	if (timerfd_settime(fd, sflags, &its, NULL)) fail("timerfd_settime %d", c);
	return fd;
}

static void fdinfo(int fd, int *clockid, int *sflags)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	if (!f) fail("fdinfo");
	*clockid = *sflags = -1;
	while (fgets(line, sizeof line, f)) {
		sscanf(line, "clockid: %d", clockid);
		sscanf(line, "settime flags: %o", (unsigned *)sflags);
	}
	fclose(f);
}

static uint64_t ticks(int fd)
{
	uint64_t t;
	if (read(fd, &t, 8) != 8) fail("read ticks");
	return t;
}

static int readable(int fd)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	return poll(&pf, 1, 0);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	double t0 = now(CLOCK_MONOTONIC);
	int lng = mk(CLOCK_MONOTONIC, 0, 0, 1000, 0);
	int expired = mk(CLOCK_MONOTONIC, 0, 0, 0.001, 0);
	int periodic = mk(CLOCK_MONOTONIC, TFD_CLOEXEC, 0, 0.001, 3600);
	double rt_deadline = now(CLOCK_REALTIME) + 1000;
	int rt = mk(CLOCK_REALTIME, 0, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, rt_deadline, 0);
	int boot = mk(CLOCK_BOOTTIME, 0, TFD_TIMER_ABSTIME, now(CLOCK_BOOTTIME) + 1000, 7);
	int fire = mk(CLOCK_MONOTONIC, TFD_NONBLOCK, 0, 4, 0);
	int off = mk(CLOCK_MONOTONIC, 0, 0, 0, 5); /* disarmed, with an interval */
	usleep(20000); /* expired and periodic have expired once */
	double pre = now(CLOCK_MONOTONIC) - t0;
	test_ready();
	test_waitsig();
	double elapsed = now(CLOCK_MONOTONIC) - t0;

	int c, f;
	fdinfo(rt, &c, &f);
	if (c != CLOCK_REALTIME || f != (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET)) fail("rt: clock %d flags %o", c, f);
	fdinfo(boot, &c, &f);
	if (c != CLOCK_BOOTTIME || f != TFD_TIMER_ABSTIME) fail("boot: clock %d flags %o", c, f);
	fdinfo(lng, &c, &f);
	if (c != CLOCK_MONOTONIC || f != 0) fail("lng: clock %d flags %o", c, f);
	if (!(fcntl(fire, F_GETFL) & O_NONBLOCK)) fail("TFD_NONBLOCK lost");
	if (fcntl(lng, F_GETFL) & O_NONBLOCK) fail("O_NONBLOCK appeared");
	if (!(fcntl(periodic, F_GETFD) & FD_CLOEXEC)) fail("TFD_CLOEXEC lost");

	/* relative time goes on from where it was: frozen time does not count */
	double r = remaining(lng, NULL);
	if (r > 1000 - pre || r < 1000 - elapsed - 1) fail("lng: %.3f s left, %.3f s elapsed", r, elapsed);
	double iv;
	r = remaining(boot, &iv);
	if (r > 1000 - pre || r < 1000 - elapsed - 1 || iv != 7) fail("boot: %.3f s left, interval %.3f", r, iv);
	/* a wall-clock deadline stays where it was */
	r = remaining(rt, NULL);
	double want = rt_deadline - now(CLOCK_REALTIME);
	if (r < want - 0.5 || r > want + 0.5) fail("rt: %.3f s left, deadline in %.3f", r, want);
	r = remaining(off, &iv);
	if (r != 0 || iv != 5) fail("off: value %.3f interval %.3f", r, iv);
	if (readable(off)) fail("disarmed timer readable");

	/* expirations not read before the dump */
	uint64_t n;
	if ((n = ticks(expired)) != 1) fail("expired: %llu ticks", (unsigned long long)n);
	if (readable(expired)) fail("expired: readable twice");
	if ((n = ticks(periodic)) != 1) fail("periodic: %llu ticks", (unsigned long long)n);
	r = remaining(periodic, &iv);
	if (r > 3600 - pre + 0.001 || r < 3600 - elapsed - 1 || iv != 3600) fail("periodic: %.3f s left", r);

	/* the 4 s timer fires when its remaining time says */
	r = remaining(fire, NULL);
	if (r > 4 - pre) fail("fire: %.3f s left", r);
	double w0 = now(CLOCK_MONOTONIC);
	struct pollfd pf = {.fd = fire, .events = POLLIN};
	if (poll(&pf, 1, (int)(r * 1000) + 2000) != 1) fail("fire never fired (%.3f s left)", r);
	double waited = now(CLOCK_MONOTONIC) - w0;
	if (r > 0 && (waited < r - 0.05 || waited > r + 0.5)) fail("fire: waited %.3f s for %.3f s", waited, r);
	if ((n = ticks(fire)) != 1) fail("fire: %llu ticks", (unsigned long long)n);
	test_msg("remaining %.3f s, waited %.3f s\n", r, waited);
	pass();
}
