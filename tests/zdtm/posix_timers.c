/*
 * POSIX timers keep their ids (with gaps, and a sparse one chosen through
 * PR_TIMER_CREATE_RESTORE_IDS), clocks, notification (SIGEV_SIGNAL with
 * sival, SIGEV_THREAD_ID to a thread, SIGEV_NONE), interval and remaining
 * time; a periodic timer whose signal was pending fires with overruns.
 */
#include "zdtmlib.h"
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

#define SIG_PERIODIC (SIGRTMIN + 1)
#define SIG_THREAD (SIGRTMIN + 2)
#define SIG_OVERRUN (SIGRTMIN + 3)
#define SPARSE_ID 1000

static volatile int periodic_count, periodic_timerid = -1, periodic_val = -1;
static volatile pid_t worker_tid, got_tid;
static volatile int got_val;
static int have_sparse;

static int t_create(clockid_t clock, int notify, int sig, int val, pid_t tid)
{
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = notify;
	sev.sigev_signo = sig;
	sev.sigev_value.sival_int = val;
	sev._sigev_un._tid = tid;
	int id = -1;
	if (syscall(SYS_timer_create, clock, &sev, &id))
		fail("timer_create(clock %d, notify %d)", clock, notify);
	return id;
}

static void t_set(int id, long value_ns, long interval_ns)
{
	struct itimerspec its = {
		.it_interval = {interval_ns / 1000000000L, interval_ns % 1000000000L},
		.it_value = {value_ns / 1000000000L, value_ns % 1000000000L},
	};
	if (syscall(SYS_timer_settime, id, 0, &its, NULL))
		fail("timer_settime(%d)", id);
}

static double t_get(int id, double *interval)
{
	struct itimerspec its;
	if (syscall(SYS_timer_gettime, id, &its))
		fail("timer_gettime(%d)", id);
	if (interval)
		*interval = its.it_interval.tv_sec + its.it_interval.tv_nsec / 1e9;
	return its.it_value.tv_sec + its.it_value.tv_nsec / 1e9;
}

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The 3 lines after "ID: id" in /proc/self/timers: signal, notify, ClockID. */
static void timer_desc(int id, char *out, size_t len)
{
	char buf[16384], key[32];
	int fd = open("/proc/self/timers", O_RDONLY);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		fail("read /proc/self/timers");
	buf[n] = 0;
	snprintf(key, sizeof(key), "ID: %d\n", id);
	char *p = buf;
	while ((p = strstr(p, key)) && p != buf && p[-1] != '\n')
		p++; /* "ClockID: 0" is not "ID: 0" */
	if (!p) {
		out[0] = 0;
		return;
	}
	p += strlen(key);
	char *end = strstr(p, "ID: ");
	size_t l = end ? (size_t)(end - p) : strlen(p);
	if (l >= len)
		l = len - 1;
	memcpy(out, p, l);
	out[l] = 0;
}

static void on_periodic(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	periodic_count++;
	periodic_timerid = si->si_timerid;
	periodic_val = si->si_value.sival_int;
}

static void *worker(void *arg)
{
	(void)arg;
	worker_tid = syscall(SYS_gettid);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIG_THREAD);
	for (;;) {
		siginfo_t si;
		if (sigwaitinfo(&m, &si) == SIG_THREAD && si.si_code == SI_TIMER) {
			got_val = si.si_value.sival_int;
			got_tid = syscall(SYS_gettid);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	/* Threads start with everything blocked; the main thread then takes SIG_PERIODIC. */
	sigset_t all, m;
	sigfillset(&all);
	sigdelset(&all, SIGTERM);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	pthread_t th;
	pthread_create(&th, NULL, worker, NULL);
	while (!worker_tid)
		usleep(1000);
	sigemptyset(&m);
	sigaddset(&m, SIG_THREAD);
	sigaddset(&m, SIG_OVERRUN);
	pthread_sigmask(SIG_SETMASK, &m, NULL);
	struct sigaction sa = {0};
	sa.sa_sigaction = on_periodic;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIG_PERIODIC, &sa, NULL);

	int t0 = t_create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIG_PERIODIC, 1000, 0);
	int d1 = t_create(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
	int d2 = t_create(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
	int t3 = t_create(CLOCK_REALTIME, SIGEV_THREAD_ID, SIG_THREAD, 3000, worker_tid);
	int d4 = t_create(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
	int t5 = t_create(CLOCK_MONOTONIC, SIGEV_NONE, SIGUSR1, 5000, 0);
	int t6 = t_create(CLOCK_BOOTTIME, SIGEV_SIGNAL, SIG_OVERRUN, 6000, 0);
	int t7 = t_create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR1, 7000, 0);
	int gaps[3] = {d1, d2, d4};
	for (int i = 0; i < 3; i++)
		syscall(SYS_timer_delete, gaps[i]);
	if (t0 != 0 || t3 != 3 || t5 != 5 || t6 != 6 || t7 != 7)
		fail("unexpected timer ids %d %d %d %d %d", t0, t3, t5, t6, t7);
	/* A sparse id, the way a restorer would make it (Linux 6.17+). */
	int t1000 = -1;
	if (prctl(77 /* PR_TIMER_CREATE_RESTORE_IDS */, 1, 0, 0, 0) == 0) {
		struct sigevent sev = {0};
		sev.sigev_notify = SIGEV_SIGNAL;
		sev.sigev_signo = SIGUSR2;
		sev.sigev_value.sival_int = 1000000;
		t1000 = SPARSE_ID;
		if (syscall(SYS_timer_create, CLOCK_PROCESS_CPUTIME_ID, &sev, &t1000) || t1000 != SPARSE_ID)
			fail("timer_create with a chosen id");
		prctl(77, 0, 0, 0, 0);
		have_sparse = 1;
		t_set(t1000, 50000000000L, 0); /* 50 s of CPU time: never fires here */
	}

	t_set(t0, 100000000L, 100000000L);      /* periodic 100 ms */
	t_set(t3, 60000000000L, 0);             /* one-shot 60 s, to the worker */
	double m5 = mono();
	t_set(t5, 100000000000L, 0);            /* one-shot 100 s, no signal */
	t_set(t6, 2000000L, 2000000L);          /* periodic 2 ms, signal kept blocked */
	/* t7 stays disarmed */
	usleep(50000);
	sigset_t pend;
	sigpending(&pend);
	if (!sigismember(&pend, SIG_OVERRUN))
		fail("timer 6 signal not pending before the dump");

	int ids[] = {t0, t3, t5, t6, t7, t1000};
	int nids = have_sparse ? 6 : 5;
	char before[6][512], after[512];
	for (int i = 0; i < nids; i++) {
		timer_desc(ids[i], before[i], sizeof(before[i]));
		if (!before[i][0])
			fail("timer %d not in /proc/self/timers", ids[i]);
	}

	test_ready();
	test_waitsig();

	/* The same timers, with the same ids, and none of the deleted ones. */
	for (int i = 0; i < nids; i++) {
		timer_desc(ids[i], after, sizeof(after));
		if (strcmp(before[i], after))
			fail("timer %d changed: before\n%safter\n%s", ids[i], before[i], after);
	}
	for (int i = 0; i < 3; i++) {
		struct itimerspec its;
		errno = 0;
		if (syscall(SYS_timer_gettime, gaps[i], &its) == 0 || errno != EINVAL)
			fail("deleted timer %d exists after restore", gaps[i]);
	}

	double iv, v = t_get(t0, &iv);
	if (iv != 0.1 || v <= 0 || v > 0.1)
		fail("periodic timer 0: value %f interval %f", v, iv);
	int c0 = periodic_count;
	double start = mono();
	while (mono() - start < 0.45)
		usleep(10000);
	if (periodic_count - c0 < 3)
		fail("periodic timer 0 fired %d times in 450 ms", periodic_count - c0);
	if (periodic_timerid != t0 || periodic_val != 1000)
		fail("periodic timer 0 siginfo: id %d value %d", periodic_timerid, periodic_val);

	/* Remaining time of the SIGEV_NONE timer, against the container's monotonic clock. */
	v = t_get(t5, &iv);
	double total = v + (mono() - m5);
	if (iv != 0 || total < 98.5 || total > 103)
		fail("timer 5: remaining %f + elapsed %f = %f, not 100 s", v, mono() - m5, total);

	v = t_get(t3, &iv);
	if (iv != 0 || v < 40 || v > 60)
		fail("thread timer 3: remaining %f interval %f", v, iv);
	t_set(t3, 20000000L, 0);
	start = mono();
	while (!got_tid && mono() - start < 2)
		usleep(1000);
	if (got_tid != worker_tid || got_val != 3000)
		fail("thread timer 3 signal went to %d (worker %d) with value %d", got_tid, worker_tid, got_val);

	/* The signal of timer 6 is pending; it carries its overruns when taken. */
	sigpending(&pend);
	if (!sigismember(&pend, SIG_OVERRUN))
		fail("timer 6 signal not pending after restore");
	usleep(20000);
	siginfo_t si;
	sigset_t w;
	sigemptyset(&w);
	sigaddset(&w, SIG_OVERRUN);
	struct timespec zero = {0, 0};
	if (sigtimedwait(&w, &si, &zero) != SIG_OVERRUN)
		fail("timer 6 signal");
	if (si.si_code != SI_TIMER || si.si_timerid != t6 || si.si_value.sival_int != 6000)
		fail("timer 6 siginfo: code %d id %d value %d", si.si_code, si.si_timerid, si.si_value.sival_int);
	if (si.si_overrun < 5)
		fail("timer 6 overrun %d", si.si_overrun);
	int ov = syscall(SYS_timer_getoverrun, t6);
	if (ov != si.si_overrun)
		fail("timer_getoverrun(6) %d, siginfo says %d", ov, si.si_overrun);
	v = t_get(t6, &iv);
	if (iv != 0.002 || v > 0.002)
		fail("timer 6: value %f interval %f", v, iv);

	v = t_get(t7, &iv);
	if (v != 0 || iv != 0)
		fail("disarmed timer 7 armed: %f/%f", v, iv);
	if (have_sparse) {
		v = t_get(t1000, &iv);
		if (iv != 0 || v < 49 || v > 50)
			fail("cpu timer %d: remaining %f", t1000, v);
	}
	pass();
}
