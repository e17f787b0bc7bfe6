/*
 * ITIMER_REAL (periodic), ITIMER_VIRTUAL (one-shot) and ITIMER_PROF
 * (periodic) keep their interval and remaining time, and fire after restore
 * at about the right time: wall time for REAL, CPU time for the others.
 */
#include "zdtmlib.h"
#include <sys/time.h>
#include <time.h>

#define REAL_US 300000
#define VIRT_US 500000
#define PROF_US 700000
#define PROF_IV_US 250000

static volatile int nreal, nprof, virt_fired;
static double real_at[4096], prof_at[16];
static volatile double virt_at;

static double clk(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_alarm(int sig)
{
	(void)sig;
	if (nreal < 4096)
		real_at[nreal] = clk(CLOCK_MONOTONIC);
	nreal++;
}

static void on_vtalrm(int sig)
{
	(void)sig;
	virt_at = clk(CLOCK_PROCESS_CPUTIME_ID);
	virt_fired++;
}

static void on_prof(int sig)
{
	(void)sig;
	if (nprof < 16)
		prof_at[nprof] = clk(CLOCK_PROCESS_CPUTIME_ID);
	nprof++;
}

static int about(double got, double want) { return got > want * 0.8 - 0.02 && got < want * 1.2 + 0.05; }

static double get(int which, double *interval)
{
	struct itimerval it;
	if (getitimer(which, &it))
		fail("getitimer(%d)", which);
	*interval = it.it_interval.tv_sec + it.it_interval.tv_usec / 1e6;
	return it.it_value.tv_sec + it.it_value.tv_usec / 1e6;
}

static void set(int which, long value_us, long interval_us)
{
	struct itimerval it = {
		.it_interval = {interval_us / 1000000, interval_us % 1000000},
		.it_value = {value_us / 1000000, value_us % 1000000},
	};
	if (setitimer(which, &it, NULL))
		fail("setitimer(%d)", which);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct sigaction sa = {0};
	sa.sa_flags = SA_RESTART;
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = on_vtalrm;
	sigaction(SIGVTALRM, &sa, NULL);
	sa.sa_handler = on_prof;
	sigaction(SIGPROF, &sa, NULL);
	set(ITIMER_REAL, REAL_US, REAL_US);
	set(ITIMER_VIRTUAL, VIRT_US, 0);
	set(ITIMER_PROF, PROF_US, PROF_IV_US);
	test_ready();
	test_waitsig();

	double iv, v;
	v = get(ITIMER_REAL, &iv);
	if (iv != REAL_US / 1e6 || v <= 0 || v > REAL_US / 1e6)
		fail("ITIMER_REAL: value %f interval %f", v, iv);
	/* Waiting in sigsuspend used (almost) no CPU time. */
	/* CPU itimers are kept in ticks (4 ms at HZ=250): allow one tick more. */
	v = get(ITIMER_VIRTUAL, &iv);
	if (iv != 0 || v > VIRT_US / 1e6 + 0.01 || v < VIRT_US / 1e6 - 0.1)
		fail("ITIMER_VIRTUAL: value %f interval %f", v, iv);
	double virt_left = v;
	v = get(ITIMER_PROF, &iv);
	if (iv < PROF_IV_US / 1e6 || iv > PROF_IV_US / 1e6 + 0.01 || v > PROF_US / 1e6 + 0.01 ||
	    v < PROF_US / 1e6 - 0.1)
		fail("ITIMER_PROF: value %f interval %f", v, iv);
	double prof_left = v;
	if (virt_fired || nprof)
		fail("CPU timers fired while idle: virtual %d prof %d", virt_fired, nprof);

	/* Burn CPU: VIRTUAL fires once, PROF at its value and then every interval. */
	int real0 = nreal;
	double cpu0 = clk(CLOCK_PROCESS_CPUTIME_ID), wall0 = clk(CLOCK_MONOTONIC);
	volatile unsigned long x = 0;
	while (nprof < 3 && clk(CLOCK_MONOTONIC) - wall0 < 20)
		for (int i = 0; i < 100000; i++)
			x += i;
	if (!virt_fired || virt_fired > 1)
		fail("ITIMER_VIRTUAL fired %d times", virt_fired);
	/* The CPU itimers count sampled ticks, the CPU clock exact run time: on a
	 * busy VM they differ by several percent. */
	if (!about(virt_at - cpu0, virt_left))
		fail("ITIMER_VIRTUAL fired after %f s of CPU, expected %f", virt_at - cpu0, virt_left);
	if (nprof < 3)
		fail("ITIMER_PROF fired %d times", nprof);
	if (!about(prof_at[0] - cpu0, prof_left))
		fail("ITIMER_PROF fired after %f s of CPU, expected %f", prof_at[0] - cpu0, prof_left);
	for (int i = 1; i < 3; i++) {
		double d = prof_at[i] - prof_at[i - 1];
		if (!about(d, PROF_IV_US / 1e6))
			fail("ITIMER_PROF interval %f", d);
	}

	/* REAL kept firing every 300 ms, before, across and after the restores. */
	double wall1 = clk(CLOCK_MONOTONIC);
	while (clk(CLOCK_MONOTONIC) - wall1 < 1.0)
		usleep(10000);
	int n = nreal < 4096 ? nreal : 4096;
	int after = nreal - real0;
	double expect = (clk(CLOCK_MONOTONIC) - wall0) / (REAL_US / 1e6);
	if (after < expect - 2 || after > expect + 2)
		fail("ITIMER_REAL fired %d times in %f s", after, clk(CLOCK_MONOTONIC) - wall0);
	for (int i = 1; i < n; i++) {
		double d = real_at[i] - real_at[i - 1];
		/* The container's monotonic clock does not count the time it was down. */
		if (d < REAL_US / 1e6 - 0.1 || d > REAL_US / 1e6 + 1.5)
			fail("ITIMER_REAL gap %f between firings %d and %d", d, i - 1, i);
	}
	pass();
}
