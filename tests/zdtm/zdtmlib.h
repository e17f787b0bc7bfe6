/*
 * zdtm-style test library (our own take on CRIU's idea).
 *
 * A test sets up one kind of state, calls test_ready(), then test_waitsig()
 * blocks until SIGTERM (sent after the checkpoint/restore cycles), then it
 * checks every bit of its state and calls pass() or fail().
 *
 * Files, in the test's working directory:
 *   NAME.pid   written by test_init(): the pid (as the container sees it)
 *   NAME.ready created by test_ready()
 *   NAME.out   stdout/stderr: "PASS" or "FAIL: reason" on the last line
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static const char *zdtm_name = "test";
static volatile sig_atomic_t zdtm_stop;

static void zdtm_sigterm(int sig) { (void)sig; zdtm_stop = 1; }

__attribute__((unused)) static void test_msg(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf(" (errno %d: %s)\n", errno, strerror(errno));
	va_end(ap);
	fflush(stdout);
	exit(1);
}

static void pass(void)
{
	printf("PASS\n");
	fflush(stdout);
	exit(0);
}

static void test_init(int argc, char **argv)
{
	char path[256];
	const char *slash = strrchr(argv[0], '/');
	zdtm_name = slash ? slash + 1 : argv[0];
	(void)argc;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = zdtm_sigterm;
	sigaction(SIGTERM, &sa, NULL);
	snprintf(path, sizeof(path), "%s.pid", zdtm_name);
	FILE *f = fopen(path, "w");
	if (!f)
		fail("can't write %s", path);
	fprintf(f, "%d\n", getpid());
	fclose(f);
}

static void test_ready(void)
{
	char path[256];
	snprintf(path, sizeof(path), "%s.ready", zdtm_name);
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	if (fd < 0)
		fail("can't create %s", path);
	close(fd);
}

/* Wait for SIGTERM without busy looping; the blocked mask stays as the test set it. */
static void test_waitsig(void)
{
	sigset_t m;
	sigprocmask(SIG_BLOCK, NULL, &m);
	sigdelset(&m, SIGTERM);
	while (!zdtm_stop)
		sigsuspend(&m);
}
