/*
 * Seccomp filters, per thread and shared.  Process P1: filter A (getppid
 * fails with errno 33) installed with TSYNC, so its two threads share it;
 * then filter B (getpgid -> errno 44, with SECCOMP_FILTER_FLAG_LOG) in the
 * main thread only.  Child P2 (forked after A): its second thread adds
 * filter C (getsid -> errno 55) for itself.  After restore every filter
 * still blocks what it blocked, only where it did, and the sharing is real:
 * a TSYNC install from P1's main thread succeeds only if the other thread's
 * filter is an ancestor of the main thread's, and then B applies there too.
 */
#include "zdtmlib.h"
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static void install(int nr, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
	long rc = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
	if (rc)
		fail("seccomp(nr %d, flags %#x) = %ld", nr, flags, rc);
}

/* errno a syscall fails with (0: it worked). */
static int blocked(long nr)
{
	errno = 0;
	long rc = syscall(nr, 0);
	return rc < 0 ? errno : 0;
}

static int nfilters(pid_t tid)
{
	char path[64], buf[8192];
	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	int fd = open(path, O_RDONLY);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	char *p = strstr(buf, "Seccomp_filters:");
	return p ? atoi(p + 16) : -1;
}

/* A thread that runs check requests from a pipe and answers with a result byte. */
struct helper {
	int req[2], ans[2];
	pid_t tid;
	int extra_filter; /* syscall number to filter in this thread only, or -1 */
};

static void *helper_main(void *arg)
{
	struct helper *h = arg;
	if (h->extra_filter >= 0)
		install(h->extra_filter, 55, 0);
	h->tid = syscall(SYS_gettid);
	char c;
	while (read(h->req[0], &c, 1) == 1) {
		/* answer: errno of getppid, getpgid, getsid, as three bytes */
		char r[3] = {blocked(SYS_getppid), blocked(SYS_getpgid), blocked(SYS_getsid)};
		if (write(h->ans[1], r, 3) != 3)
			break;
	}
	return NULL;
}

static void start_helper(struct helper *h, int extra)
{
	if (pipe(h->req) || pipe(h->ans))
		fail("pipe");
	h->extra_filter = extra;
	h->tid = 0;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	pthread_t th;
	pthread_create(&th, NULL, helper_main, h);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	while (!h->tid)
		usleep(1000);
}

static void ask(struct helper *h, char r[3])
{
	if (write(h->req[1], "?", 1) != 1 || read(h->ans[0], r, 3) != 3)
		fail("helper thread");
}

/* P2: its main thread has A only, its helper thread A and C. Exit code 0 = all right. */
static int child_checks(struct helper *h)
{
	char r[3];
	ask(h, r);
	if (blocked(SYS_getppid) != 33 || blocked(SYS_getpgid) || blocked(SYS_getsid))
		return 10;
	if (r[0] != 33 || r[1] != 0 || r[2] != 55)
		return 11;
	if (nfilters(getpid()) != 1 || nfilters(h->tid) != 2)
		return 12;
	return 0;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct helper h1;
	start_helper(&h1, -1);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		fail("no_new_privs");
	install(SYS_getppid, 33, SECCOMP_FILTER_FLAG_TSYNC); /* A, shared by both threads */

	int go[2], ready[2];
	if (pipe(go) || pipe(ready))
		fail("pipe");
	fflush(stdout);
	pid_t child = fork();
	if (child == 0) {
		struct helper h2;
		start_helper(&h2, SYS_getsid); /* C in this thread only */
		char c = child_checks(&h2);
		if (write(ready[1], &c, 1) != 1 || c)
			_exit(c ? c : 21);
		if (read(go[0], &c, 1) != 1)
			_exit(20);
		_exit(child_checks(&h2));
	}
	install(SYS_getpgid, 44, SECCOMP_FILTER_FLAG_LOG); /* B, main thread only */
	char r[3];
	if (read(ready[0], r, 1) != 1 || r[0])
		fail("setup: child process checks: %d", r[0]);
	ask(&h1, r);
	if (blocked(SYS_getppid) != 33 || blocked(SYS_getpgid) != 44 || blocked(SYS_getsid))
		fail("setup: main thread verdicts");
	if (r[0] != 33 || r[1] || r[2])
		fail("setup: helper verdicts %d %d %d", r[0], r[1], r[2]);
	test_ready();
	test_waitsig();

	if (blocked(SYS_getppid) != 33 || blocked(SYS_getpgid) != 44 || blocked(SYS_getsid))
		fail("main thread verdicts: getppid %d getpgid %d getsid %d", blocked(SYS_getppid),
		     blocked(SYS_getpgid), blocked(SYS_getsid));
	ask(&h1, r);
	if (r[0] != 33 || r[1] || r[2])
		fail("helper thread verdicts: getppid %d getpgid %d getsid %d", r[0], r[1], r[2]);
	pid_t me = getpid();
	if (nfilters(me) != 2 || nfilters(h1.tid) != 1)
		fail("filter counts %d %d", nfilters(me), nfilters(h1.tid));
	/* TSYNC works only if the helper's filter is an ancestor of ours: A is shared. */
	install(SYS_getpid + 1000, 1, SECCOMP_FILTER_FLAG_TSYNC);
	ask(&h1, r);
	if (nfilters(h1.tid) != 3 || r[1] != 44)
		fail("after TSYNC: helper has %d filters, getpgid %d", nfilters(h1.tid), r[1]);

	if (write(go[1], "g", 1) != 1)
		fail("write");
	int status;
	if (waitpid(child, &status, 0) != child)
		fail("waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail("child process checks: status %#x", status);
	pass();
}
