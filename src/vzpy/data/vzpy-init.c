/*
 * vzpy-init: the minimal pid 1 of a container whose template has no /sbin/init.
 *
 * Usage: vzpy-init [-t GRACE_SECONDS]    (default: $VZPY_INIT_TIMEOUT, else 5)
 *
 * What it does, and nothing more:
 *   - at start, runs /etc/vzpy/rc.local, else /etc/rc.local, if it is an executable
 *     regular file (only the first one found; it is not waited for);
 *   - reaps every child, including orphans the kernel reparents to it;
 *   - on SIGTERM, SIGINT, SIGPWR, SIGUSR1, SIGUSR2 or SIGRTMIN+3..+6 shuts down:
 *     kill(-1, SIGTERM) + SIGCONT, waits up to the grace time for the namespace to
 *     empty, then kill(-1, SIGKILL), reaps, and exits 0.  busybox halt, poweroff and
 *     reboot send SIGUSR1, SIGUSR2 and SIGTERM to pid 1; systemctl halt/poweroff/
 *     reboot/kexec send SIGRTMIN+3..+6.  A reboot is a halt here: whoever started
 *     the container decides whether to start it again.
 *
 * Signals are all blocked and taken with sigwaitinfo()/sigtimedwait(), never with a
 * handler or a signalfd: the whole state is the blocked mask and the syscall it sits
 * in, which a checkpoint saves and a restore rebuilds trivially.  Blocking matters
 * for more than style: the kernel drops a signal sent to a pid-namespace init whose
 * action is SIG_DFL unless the signal is blocked (kernel/signal.c sig_ignored(), the
 * SIGNAL_UNKILLABLE case), and a blocked one stays queued for sigwaitinfo().  After a
 * restore, or a ptrace interrupt, the wait returns EINTR and the loop simply waits
 * again.
 *
 * It must be pid 1: kill(-1, ...) from anywhere else would signal the whole host.
 * It prints nothing except errors, on stderr.  Built with gcc -static; no libraries.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_GRACE 5

static const char *const rc_scripts[] = {"/etc/vzpy/rc.local", "/etc/rc.local", NULL};

static void say(const char *a, const char *b, int errnum)
{
	const char *parts[] = {"vzpy-init: ", a, b ? ": " : "", b ? b : "",
			       errnum ? ": " : "", errnum ? strerror(errnum) : "", "\n"};
	for (unsigned i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		const char *p = parts[i];
		size_t n = strlen(p);
		while (n > 0) {
			ssize_t w = write(2, p, n);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return;
			p += w;
			n -= (size_t)w;
		}
	}
}

static int parse_grace(const char *s, long *out)
{
	char *end;
	long v;

	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > 86400)
		return -1;
	*out = v;
	return 0;
}

static int is_shutdown_signal(int sig)
{
	switch (sig) {
	case SIGTERM:
	case SIGINT:
	case SIGPWR:
	case SIGUSR1:
	case SIGUSR2:
		return 1;
	}
	/* systemd's halt, poweroff, reboot, kexec (systemd(1) "Signals"). */
	return sig >= SIGRTMIN + 3 && sig <= SIGRTMIN + 6;
}

/*
 * Collects every exited child without blocking.  Returns 1 once no child is left:
 * every process of the namespace descends from pid 1, so that means it is empty.
 * __WALL: a child cloned with an exit signal other than SIGCHLD is ours to reap too.
 */
static int reap(int options)
{
	for (;;) {
		pid_t pid = waitpid(-1, NULL, options | __WALL);
		if (pid > 0)
			continue;
		if (pid == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != ECHILD)
			say("waitpid", NULL, errno);
		return 1;
	}
}

static void run_rc(void)
{
	for (const char *const *rc = rc_scripts; *rc; rc++) {
		struct stat st;
		sigset_t none;
		pid_t pid;

		if (stat(*rc, &st) || !S_ISREG(st.st_mode) || access(*rc, X_OK))
			continue;
		pid = fork();
		if (pid < 0) {
			say("fork", *rc, errno);
			return;
		}
		if (pid == 0) {
			sigemptyset(&none);
			sigprocmask(SIG_SETMASK, &none, NULL);
			setsid();
			execl(*rc, *rc, (char *)NULL);
			if (errno == ENOEXEC) /* no #! line: what a shell would do */
				execl("/bin/sh", "sh", *rc, (char *)NULL);
			say("exec", *rc, errno);
			_exit(127);
		}
		return;
	}
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void shutdown_ns(const sigset_t *all, long grace)
{
	long long deadline = now_ms() + grace * 1000LL;

	kill(-1, SIGTERM);
	kill(-1, SIGCONT); /* a stopped task acts on SIGTERM only once continued */
	while (!reap(WNOHANG)) {
		long long left = deadline - now_ms();
		struct timespec ts;

		/* Clamped: a restore on another host may shift CLOCK_MONOTONIC. */
		if (left <= 0)
			break;
		if (left > grace * 1000LL)
			left = grace * 1000LL;
		ts.tv_sec = left / 1000;
		ts.tv_nsec = (left % 1000) * 1000000;
		/* Any signal wakes us; SIGCHLD is the one that matters, the rest are dropped. */
		sigtimedwait(all, NULL, &ts);
	}
	kill(-1, SIGKILL);
	reap(0);
	exit(0);
}

int main(int argc, char **argv)
{
	long grace = DEFAULT_GRACE;
	const char *env = getenv("VZPY_INIT_TIMEOUT");
	sigset_t all;

	if (env && parse_grace(env, &grace))
		say("ignoring bad VZPY_INIT_TIMEOUT", env, 0);
	if (argc == 3 && !strcmp(argv[1], "-t")) {
		if (parse_grace(argv[2], &grace)) {
			say("bad grace time", argv[2], 0);
			return 2;
		}
	} else if (argc != 1) {
		say("usage: vzpy-init [-t GRACE_SECONDS]", NULL, 0);
		return 2;
	}
	if (getpid() != 1) {
		say("must run as pid 1 of a pid namespace", NULL, 0);
		return 2;
	}

	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	prctl(PR_SET_NAME, "init", 0, 0, 0);
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 0);
	if (chdir("/"))
		say("chdir /", NULL, errno);
	setsid(); /* fails harmlessly if the starter already made us a session leader */

	run_rc();
	for (;;) {
		int sig = sigwaitinfo(&all, NULL);

		if (sig < 0) {
			if (errno != EINTR)
				say("sigwaitinfo", NULL, errno);
			continue;
		}
		if (sig == SIGCHLD)
			reap(WNOHANG);
		else if (is_shutdown_signal(sig))
			shutdown_ns(&all, grace);
		/* anything else (SIGHUP, SIGWINCH, ...) is dropped */
	}
}
