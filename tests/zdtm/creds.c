/*
 * Credentials, per thread: the main thread runs as uid/gid 1000 with
 * supplementary groups, reduced permitted/effective/inheritable sets, an
 * ambient capability, a smaller bounding set, locked securebits and
 * no_new_privs; a second thread has other ids (distinct real/effective/
 * saved/fs), other groups and no capabilities at all.  Every credential line
 * of /proc/self/task/TID/status, the securebits, the pdeath signals (which a
 * credential change clears) and the dumpable flag (which it resets) must be
 * as before.  Raw syscalls throughout: glibc's set*id() would apply the
 * main thread's ids to every thread.
 */
#include "zdtmlib.h"
#include <linux/capability.h>
#include <linux/securebits.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static const char *keys[] = {"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:",
			     "CapBnd:", "CapAmb:", "NoNewPrivs:", "Seccomp:"};
#define NKEYS (int)(sizeof(keys) / sizeof(keys[0]))

struct snap {
	char lines[NKEYS][256];
	long secbits, pdeath;
};

static pid_t worker_tid;
static volatile int worker_cmd, worker_done;
static struct snap worker_before, worker_after;

static void snapshot(pid_t tid, struct snap *s)
{
	char path[64], buf[8192];
	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	int fd = open(path, O_RDONLY);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		fail("read %s", path);
	buf[n] = 0;
	for (int i = 0; i < NKEYS; i++) {
		char *p = strstr(buf, keys[i]);
		if (!p)
			fail("no %s in %s", keys[i], path);
		size_t l = strcspn(p, "\n");
		snprintf(s->lines[i], sizeof(s->lines[i]), "%.*s", (int)l, p);
	}
	if (tid == syscall(SYS_gettid)) {
		s->secbits = prctl(PR_GET_SECUREBITS);
		int sig = 0;
		prctl(PR_GET_PDEATHSIG, &sig);
		s->pdeath = sig;
	}
}

static void compare(const char *who, struct snap *a, struct snap *b)
{
	for (int i = 0; i < NKEYS; i++)
		if (strcmp(a->lines[i], b->lines[i]))
			fail("%s: '%s' became '%s'", who, a->lines[i], b->lines[i]);
	if (a->secbits != b->secbits)
		fail("%s: securebits %#lx became %#lx", who, a->secbits, b->secbits);
	if (a->pdeath != b->pdeath)
		fail("%s: pdeath signal %ld became %ld", who, a->pdeath, b->pdeath);
}

static void capset3(unsigned long long eff, unsigned long long prm, unsigned long long inh)
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2] = {
		{(unsigned)eff, (unsigned)prm, (unsigned)inh},
		{(unsigned)(eff >> 32), (unsigned)(prm >> 32), (unsigned)(inh >> 32)},
	};
	if (syscall(SYS_capset, &h, d))
		fail("capset");
}

static void *worker(void *arg)
{
	(void)arg;
	gid_t g[] = {4000};
	if (syscall(SYS_setgroups, 1, g) || syscall(SYS_setresgid, 1001, 1002, 1003) ||
	    syscall(SYS_setresuid, 1001, 1002, 1003))
		fail("worker ids");
	syscall(SYS_setfsuid, 1003);
	syscall(SYS_setfsgid, 1001);
	prctl(PR_SET_PDEATHSIG, SIGWINCH); /* default action: ignore */
	worker_tid = syscall(SYS_gettid);
	snapshot(worker_tid, &worker_before);
	while (worker_cmd == 0)
		usleep(10000);
	snapshot(worker_tid, &worker_after);
	worker_done = 1;
	return NULL;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	/* NAME.ready is created after the ids change. */
	if (chmod(".", 0777))
		fail("chmod .");
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_t th;
	pthread_create(&th, NULL, worker, NULL);
	sigset_t none;
	sigemptyset(&none);
	pthread_sigmask(SIG_SETMASK, &none, NULL);
	while (!worker_tid)
		usleep(1000);

	gid_t groups[] = {1000, 2000, 3000};
	if (syscall(SYS_setgroups, 3, groups))
		fail("setgroups");
	if (prctl(PR_CAPBSET_DROP, CAP_MKNOD) || prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT))
		fail("PR_CAPBSET_DROP");
	if (prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NOROOT | SECBIT_NOROOT_LOCKED))
		fail("PR_SET_SECUREBITS");
	if (syscall(SYS_setresgid, 1000, 1000, 1000) || syscall(SYS_setresuid, 1000, 1000, 1000))
		fail("setres[ug]id");
	unsigned long long nbs = 1ULL << CAP_NET_BIND_SERVICE, capkill = 1ULL << CAP_KILL;
	capset3(nbs, nbs | capkill | (1ULL << CAP_CHOWN), nbs | capkill);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0))
		fail("PR_CAP_AMBIENT_RAISE");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		fail("PR_SET_NO_NEW_PRIVS");
	/* The euid change made the process non-dumpable; a program may set it back. */
	if (prctl(PR_GET_DUMPABLE) != 0 || prctl(PR_SET_DUMPABLE, 1))
		fail("PR_SET_DUMPABLE");
	prctl(PR_SET_PDEATHSIG, SIGURG); /* default action: ignore */

	struct snap main_before, main_after;
	pid_t me = syscall(SYS_gettid);
	snapshot(me, &main_before);
	if (strncmp(main_before.lines[0], "Uid:\t1000\t1000\t1000\t1000", 24) ||
	    strcmp(main_before.lines[5], "CapEff:\t0000000000000400") ||
	    strncmp(worker_before.lines[0], "Uid:\t1001\t1002\t1003\t1003", 24))
		fail("setup: %s / %s / %s", main_before.lines[0], main_before.lines[5],
		     worker_before.lines[0]);
	test_ready();
	test_waitsig();

	snapshot(me, &main_after);
	worker_cmd = 1;
	while (!worker_done)
		usleep(1000);
	compare("main thread", &main_before, &main_after);
	compare("second thread", &worker_before, &worker_after);
	if (prctl(PR_GET_DUMPABLE) != 1)
		fail("dumpable flag %d", prctl(PR_GET_DUMPABLE));
	if (getuid() != 1000 || geteuid() != 1000 || getgid() != 1000)
		fail("ids");
	pass();
}
