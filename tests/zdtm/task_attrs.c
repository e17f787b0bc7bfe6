/*
 * Process attributes beyond memory and files: rlimits (soft and hard,
 * RLIMIT_NOFILE soft raised and hard lowered, RLIMIT_STACK, ...),
 * personality, umask, comm of the process and of a thread, oom_score_adj,
 * pdeath signal (per thread), child subreaper, dumpable.
 */
#include "zdtmlib.h"
#include <pthread.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

static struct {
	int res;
	rlim_t cur, max;
} limits[] = {
	{RLIMIT_NOFILE, 4000, 5000},  /* soft raised, hard lowered */
	{RLIMIT_STACK, 4 << 20, 64 << 20},
	{RLIMIT_CORE, 0, 1 << 30},
	{RLIMIT_CPU, 100000, 200000},
	{RLIMIT_NPROC, 3000, 4000},
	{RLIMIT_MSGQUEUE, 100000, 200000},
	{RLIMIT_FSIZE, 1ULL << 40, RLIM_INFINITY},
};
#define NLIM (int)(sizeof(limits) / sizeof(limits[0]))

static volatile pid_t worker_tid;
static volatile int worker_cmd, worker_ok = -1;

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return 0;
}

static void *worker(void *arg)
{
	(void)arg;
	prctl(PR_SET_NAME, "zdtm-worker");
	prctl(PR_SET_PDEATHSIG, SIGWINCH); /* default action: ignore */
	worker_tid = syscall(SYS_gettid);
	while (!worker_cmd)
		usleep(10000);
	char name[32] = "";
	int sig = 0;
	prctl(PR_GET_NAME, name);
	prctl(PR_GET_PDEATHSIG, &sig);
	worker_ok = !strcmp(name, "zdtm-worker") && sig == SIGWINCH;
	if (!worker_ok)
		test_msg("worker: name '%s' pdeath %d\n", name, sig);
	return NULL;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	sigset_t all, none;
	sigfillset(&all);
	sigemptyset(&none);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_t th;
	pthread_create(&th, NULL, worker, NULL);
	pthread_sigmask(SIG_SETMASK, &none, NULL);
	while (!worker_tid)
		usleep(1000);

	for (int i = 0; i < NLIM; i++) {
		struct rlimit rl = {limits[i].cur, limits[i].max};
		if (setrlimit(limits[i].res, &rl))
			fail("setrlimit(%d)", limits[i].res);
	}
	int pers = personality(0xffffffff) | ADDR_NO_RANDOMIZE | UNAME26;
	personality(pers);
	umask(027);
	prctl(PR_SET_NAME, "zdtm-main");
	int fd = open("/proc/self/oom_score_adj", O_WRONLY);
	if (fd < 0 || write(fd, "345", 3) != 3)
		fail("oom_score_adj");
	close(fd);
	prctl(PR_SET_PDEATHSIG, SIGURG); /* default action: ignore */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) || prctl(PR_SET_DUMPABLE, 0))
		fail("prctl");
	char limits_before[4096], limits_after[4096];
	if (read_file("/proc/self/limits", limits_before, sizeof(limits_before)))
		fail("read limits");
	test_ready();
	test_waitsig();

	for (int i = 0; i < NLIM; i++) {
		struct rlimit rl;
		getrlimit(limits[i].res, &rl);
		if (rl.rlim_cur != limits[i].cur || rl.rlim_max != limits[i].max)
			fail("rlimit %d: %llu/%llu, expected %llu/%llu", limits[i].res,
			     (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
			     (unsigned long long)limits[i].cur, (unsigned long long)limits[i].max);
	}
	if (read_file("/proc/self/limits", limits_after, sizeof(limits_after)))
		fail("read limits");
	if (strcmp(limits_before, limits_after))
		fail("/proc/self/limits changed:\n%s\n%s", limits_before, limits_after);
	if (personality(0xffffffff) != pers)
		fail("personality %#x, expected %#x", personality(0xffffffff), pers);
	mode_t um = umask(0);
	if (um != 027)
		fail("umask %o", um);
	char name[32] = "", buf[64];
	prctl(PR_GET_NAME, name);
	if (strcmp(name, "zdtm-main"))
		fail("comm '%s'", name);
	if (read_file("/proc/self/oom_score_adj", buf, sizeof(buf)) || atoi(buf) != 345)
		fail("oom_score_adj %s", buf);
	int sig = 0, reaper = 0;
	prctl(PR_GET_PDEATHSIG, &sig);
	if (sig != SIGURG)
		fail("pdeath signal %d", sig);
	prctl(PR_GET_CHILD_SUBREAPER, &reaper);
	if (reaper != 1)
		fail("child subreaper %d", reaper);
	if (prctl(PR_GET_DUMPABLE) != 0)
		fail("dumpable %d", prctl(PR_GET_DUMPABLE));
	worker_cmd = 1;
	pthread_join(th, NULL);
	if (worker_ok != 1)
		fail("thread comm or pdeath signal lost");
	/* fds up to the soft limit still work, beyond it not */
	if (fcntl(0, F_DUPFD, 3999) < 0 || fcntl(0, F_DUPFD, 4000) >= 0)
		fail("RLIMIT_NOFILE not in force");
	pass();
}
