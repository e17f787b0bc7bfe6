/* Signal-driven I/O: O_ASYNC with an F_SETOWN owner on a unix socketpair (owner: this
 * process), on a pipe (owner: a thread, F_SETOWN_EX TID) and on a TCP loopback
 * connection (owner: the process group); after restore each still has its flag and
 * owner, and data arriving on each still raises SIGIO in the right place. */
#define _GNU_SOURCE
#include "zdtmlib.h"
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>

static volatile sig_atomic_t sigio_main, sigio_thread;
static pid_t thread_tid, main_tid;
static int pipefd[2];
static volatile int thread_go, thread_done;
static const char *thread_err;

static void on_sigio(int sig)
{
	(void)sig;
	if (syscall(SYS_gettid) == thread_tid) sigio_thread++;
	else sigio_main++;
}

static void set_async(int fd, int type, pid_t who, const char *what)
{
	struct f_owner_ex o = {.type = type, .pid = who};
	if (fcntl(fd, F_SETOWN_EX, &o)) fail("F_SETOWN_EX %s", what);
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC | O_NONBLOCK)) fail("O_ASYNC %s", what);
}

static void check_owner(int fd, int type, pid_t who, const char *what)
{
	struct f_owner_ex o;
	if (!(fcntl(fd, F_GETFL) & O_ASYNC)) fail("%s: O_ASYNC lost", what);
	if (fcntl(fd, F_GETOWN_EX, &o)) fail("F_GETOWN_EX %s", what);
	if (o.type != type || o.pid != who) fail("%s: owner %d/%d, want %d/%d", what, o.type, o.pid, type, who);
}

static void *thread_main(void *arg)
{
	(void)arg;
	sigset_t none;
	sigemptyset(&none);
	thread_tid = syscall(SYS_gettid);
	while (!thread_go) usleep(1000);
	for (int i = 0; i < 2000 && !sigio_thread; i++) usleep(1000);
	if (!sigio_thread) thread_err = sigio_main ? "SIGIO for the pipe went to the main thread" : "no SIGIO in the owner thread for the pipe";
	thread_done = 1;
	return NULL;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	main_tid = getpid();
	struct sigaction sa = {.sa_handler = on_sigio};
	sigaction(SIGIO, &sa, NULL);
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp)) fail("socketpair");
	if (pipe(pipefd)) fail("pipe");
	pthread_t th;
	pthread_create(&th, NULL, thread_main, NULL);
	while (!thread_tid) usleep(1000);

	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof a;
	if (bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &al)) fail("listen");
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (void *)&a, sizeof a)) fail("connect");
	int s = accept(l, NULL, NULL);
	if (s < 0) fail("accept");
	close(l);

	set_async(sp[0], F_OWNER_PID, getpid(), "socketpair");
	set_async(pipefd[0], F_OWNER_TID, thread_tid, "pipe");
	set_async(s, F_OWNER_PGRP, getpgrp(), "tcp");
	sigio_main = 0;

	test_ready();
	test_waitsig();

	check_owner(sp[0], F_OWNER_PID, getpid(), "socketpair");
	check_owner(pipefd[0], F_OWNER_TID, thread_tid, "pipe");
	check_owner(s, F_OWNER_PGRP, getpgrp(), "tcp");

	sigio_main = 0;
	if (write(sp[1], "x", 1) != 1) fail("write socketpair");
	for (int i = 0; i < 2000 && !sigio_main; i++) usleep(1000);
	if (!sigio_main) fail("no SIGIO for the socketpair");

	sigio_main = 0;
	if (write(c, "y", 1) != 1) fail("write tcp");
	for (int i = 0; i < 2000 && !sigio_main; i++) usleep(1000);
	if (!sigio_main) fail("no SIGIO for the tcp connection");

	sigio_main = 0;
	thread_go = 1;
	usleep(10000);
	if (write(pipefd[1], "z", 1) != 1) fail("write pipe");
	while (!thread_done) usleep(1000);
	if (thread_err) fail("%s", thread_err);
	pass();
	return 0;
}
