/* Holds one kind of file vzpy refuses to checkpoint (argv[1]), then, once the refused
 * dump has thawed it, checks that the file's state was left as it was.
 * Prints SKIP when this kernel or configuration does not let it create the file. */
#include "zdtmlib.h"
#include <stdint.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/syscall.h>

static void skip(const char *why)
{
	printf("SKIP: %s (errno %d)\n", why, errno);
	fflush(stdout);
	test_ready();
	exit(0);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	const char *kind = argc > 1 ? argv[1] : "";
	int fd = -1;
	if (!strcmp(kind, "pidfd")) {
		if ((fd = syscall(SYS_pidfd_open, getpid(), 0)) < 0) skip("pidfd_open");
	} else if (!strcmp(kind, "userfaultfd")) {
		if ((fd = syscall(SYS_userfaultfd, O_CLOEXEC)) < 0) skip("userfaultfd");
	} else if (!strcmp(kind, "fanotify")) {
		if ((fd = fanotify_init(FAN_CLASS_NOTIF, O_RDONLY)) < 0) skip("fanotify_init");
	} else if (!strcmp(kind, "io_uring")) {
		char params[120] = {0};
		if ((fd = syscall(425 /* io_uring_setup */, 4, params)) < 0) skip("io_uring_setup");
	} else if (!strcmp(kind, "inotify_queued")) {
		mkdir("anon_refuse.dir", 0755);
		fd = inotify_init1(IN_NONBLOCK);
		if (inotify_add_watch(fd, "anon_refuse.dir", IN_CREATE) != 1) fail("inotify_add_watch");
		close(open("anon_refuse.dir/x", O_CREAT | O_WRONLY, 0644));
	} else if (!strcmp(kind, "inotify_async")) {
		/* of the kinds vzpy saves, only inotify has signal-driven I/O */
		fd = inotify_init();
		fcntl(fd, F_SETOWN, getpid());
		signal(SIGIO, SIG_IGN);
		if (fcntl(fd, F_SETFL, O_ASYNC) || !(fcntl(fd, F_GETFL) & O_ASYNC)) fail("O_ASYNC");
	} else {
		fail("unknown kind %s", kind);
	}
	test_msg("fd %d\n", fd);
	test_ready();
	test_waitsig();
	if (fcntl(fd, F_GETFD) < 0) fail("fd %d gone", fd);
	if (!strcmp(kind, "inotify_queued")) {
		char buf[4096] __attribute__((aligned(8)));
		struct inotify_event *e = (struct inotify_event *)buf;
		if (read(fd, buf, sizeof buf) <= 0) fail("the queued event was lost");
		if (e->wd != 1 || !(e->mask & IN_CREATE) || strcmp(e->name, "x")) fail("event %d %x", e->wd, e->mask);
	}
	if (!strcmp(kind, "inotify_async") && (!(fcntl(fd, F_GETFL) & O_ASYNC) || fcntl(fd, F_GETOWN) != getpid()))
		fail("O_ASYNC or its owner lost");
	pass();
}
