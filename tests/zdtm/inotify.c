/* inotify: watches keep their wds (with a gap left by a removed watch) and masks; files
 * changed after restore raise events with the original wds; nothing queued by the
 * restore itself; a new watch gets the next wd. */
#include "zdtmlib.h"
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>

#define DIR_ "inotify.dir"

struct ev { int wd; uint32_t mask; char name[64]; };

/* read every queued event (waits up to 1 s for the first) */
static int events(int fd, struct ev *out, int max)
{
	char buf[4096] __attribute__((aligned(8)));
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	int n = 0;
	if (poll(&pf, 1, 1000) != 1) return 0;
	usleep(50000);
	ssize_t len = read(fd, buf, sizeof buf);
	if (len <= 0) fail("read inotify");
	for (char *p = buf; p < buf + len && n < max;) {
		struct inotify_event *e = (struct inotify_event *)p;
		out[n].wd = e->wd;
		out[n].mask = e->mask;
		snprintf(out[n].name, sizeof out[n].name, "%s", e->len ? e->name : "");
		n++;
		p += sizeof *e + e->len;
	}
	return n;
}

static int has(struct ev *e, int n, int wd, uint32_t mask, const char *name)
{
	for (int i = 0; i < n; i++)
		if (e[i].wd == wd && (e[i].mask & mask) && !strcmp(e[i].name, name)) return 1;
	return 0;
}

static int queued(int fd)
{
	int n = -1;
	ioctl(fd, FIONREAD, &n);
	return n;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	mkdir(DIR_, 0755);
	mkdir(DIR_ "/sub", 0755);
	int fd = open(DIR_ "/file", O_CREAT | O_WRONLY | O_TRUNC, 0644);
	close(fd);
	int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	int in2 = inotify_init();
	if (in < 0 || in2 < 0) fail("inotify_init");
	int wdir = inotify_add_watch(in, DIR_, IN_CREATE | IN_MODIFY | IN_DELETE | IN_EXCL_UNLINK);
	int wtmp = inotify_add_watch(in, DIR_ "/sub", IN_ALL_EVENTS);
	int wfile = inotify_add_watch(in, DIR_ "/file", IN_MODIFY | IN_CLOSE_WRITE);
	inotify_rm_watch(in, wtmp); /* leaves a gap: wds are handed out cyclically */
	int wone = inotify_add_watch(in2, DIR_ "/sub", IN_CREATE | IN_ONESHOT);
	if (wdir != 1 || wtmp != 2 || wfile != 3 || wone != 1) fail("wds %d %d %d %d", wdir, wtmp, wfile, wone);
	struct ev e[32];
	events(in, e, 32); /* the IN_IGNORED of the removed watch */
	if (queued(in) != 0) fail("queue not empty before the dump");
	test_ready();
	test_waitsig();

	if (queued(in) != 0 || queued(in2) != 0) fail("events queued by the restore: %d %d", queued(in), queued(in2));
	if (!(fcntl(in, F_GETFL) & O_NONBLOCK)) fail("IN_NONBLOCK lost");
	if (fcntl(in2, F_GETFL) & O_NONBLOCK) fail("O_NONBLOCK appeared");
	if (!(fcntl(in, F_GETFD) & FD_CLOEXEC)) fail("IN_CLOEXEC lost");

	fd = open(DIR_ "/new", O_CREAT | O_WRONLY, 0644);
	close(fd);
	fd = open(DIR_ "/file", O_WRONLY | O_APPEND);
	if (write(fd, "x", 1) != 1) fail("write");
	close(fd);
	int n = events(in, e, 32);
	if (!has(e, n, wdir, IN_CREATE, "new")) fail("no IN_CREATE new on wd %d (%d events)", wdir, n);
	if (!has(e, n, wdir, IN_MODIFY, "file")) fail("no IN_MODIFY file on the dir's wd %d", wdir);
	if (!has(e, n, wfile, IN_MODIFY, "")) fail("no IN_MODIFY on the file's wd %d", wfile);
	if (!has(e, n, wfile, IN_CLOSE_WRITE, "")) fail("no IN_CLOSE_WRITE on wd %d", wfile);
	for (int i = 0; i < n; i++)
		if (e[i].wd != wdir && e[i].wd != wfile) fail("event on unknown wd %d", e[i].wd);
	if (has(e, n, wdir, IN_OPEN, "file")) fail("IN_OPEN reported: mask not kept");

	unlink(DIR_ "/new");
	n = events(in, e, 32);
	if (!has(e, n, wdir, IN_DELETE, "new")) fail("no IN_DELETE");

	/* the one-shot watch of the second group */
	mkdir(DIR_ "/sub/a", 0755);
	n = events(in2, e, 32);
	if (!has(e, n, wone, IN_CREATE, "a")) fail("no one-shot IN_CREATE (%d events)", n);
	mkdir(DIR_ "/sub/b", 0755);
	n = events(in2, e, 32);
	for (int i = 0; i < n; i++)
		if (e[i].mask & IN_CREATE) fail("one-shot watch fired twice");

	/* the next wd is the one after the last handed out */
	int wnew = inotify_add_watch(in, DIR_ "/sub", IN_CREATE);
	if (wnew != 4) fail("new watch got wd %d, want 4", wnew);
	if (inotify_rm_watch(in, wtmp) != -1 || errno != EINVAL) fail("removed wd %d came back", wtmp);
	pass();
}
