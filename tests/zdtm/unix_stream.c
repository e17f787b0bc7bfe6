/* Unix stream sockets: a socketpair with data queued both ways and a half-closed
 * side, a listener on an abstract name with an accepted connection and one left in
 * the accept queue (connected by a child), a listener on a relative path; credentials,
 * names, options and O_NONBLOCK; after restore new connections work. */
#include "zdtmlib.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define BIG 100000
#define ABS "\0zdtm-unix-stream"

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, size_t len)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	memcpy(a->sun_path, name, len);
	return offsetof(struct sockaddr_un, sun_path) + len;
}

static void pattern(char *buf, size_t n, int seed)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)(i * 7 + seed);
}

static void readall(int fd, char *buf, size_t n, const char *what)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r <= 0)
			fail("%s: read %zd after %zu of %zu", what, r, got, n);
		got += r;
	}
}

static void check_cred(int fd, pid_t pid, const char *what)
{
	struct ucred c;
	socklen_t l = sizeof(c);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &l))
		fail("%s: SO_PEERCRED", what);
	if (c.pid != pid || c.uid != 0 || c.gid != 0)
		fail("%s: SO_PEERCRED pid %d uid %d gid %d, want pid %d", what, c.pid, c.uid, c.gid, pid);
}

static void check_name(int fd, int peer, const char *name, size_t len, const char *what)
{
	struct sockaddr_un a;
	socklen_t l = sizeof(a);
	if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&a, &l))
		fail("%s: get%sname", what, peer ? "peer" : "sock");
	size_t got = l - offsetof(struct sockaddr_un, sun_path);
	if (name[0] != 0 && got > 0 && a.sun_path[got - 1] == 0)
		got--;
	if (got != len || memcmp(a.sun_path, name, len))
		fail("%s: name of %zu bytes '%.*s', want '%s'", what, got, (int)got, a.sun_path, name + (name[0] == 0));
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	/* writes to closed peers must fail with EPIPE, not kill us */
	signal(SIGPIPE, SIG_IGN);
	static char big[BIG], got[BIG];
	struct sockaddr_un a;
	socklen_t al;
	pid_t me = getpid();

	/* 1. socketpair: BIG bytes 0->1, "ping" 1->0, then 1 shuts down its write side */
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp))
		fail("socketpair");
	pattern(big, BIG, 3);
	int sz = 1 << 20;
	if (setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)))
		fail("SO_SNDBUF");
	size_t off = 0;
	while (off < BIG) {
		ssize_t w = write(sp[0], big + off, BIG - off);
		if (w <= 0)
			fail("write big");
		off += w;
	}
	if (write(sp[1], "ping", 4) != 4)
		fail("write ping");
	if (shutdown(sp[1], SHUT_WR))
		fail("shutdown");
	int sndbuf;
	socklen_t ol = sizeof(sndbuf);
	getsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &ol);
	fcntl(sp[1], F_SETFL, O_NONBLOCK);

	/* 2. abstract listener: one accepted connection with data both ways, one pending */
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	al = mkaddr(&a, ABS, sizeof(ABS) - 1);
	if (bind(l, (struct sockaddr *)&a, al) || listen(l, 7))
		fail("abstract listener");
	int c1 = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(c1, (struct sockaddr *)&a, al))
		fail("connect c1");
	int a1 = accept(l, NULL, NULL);
	if (a1 < 0)
		fail("accept");
	if (write(c1, "request", 7) != 7 || write(a1, "response", 8) != 8)
		fail("write c1/a1");
	int one = 1;
	setsockopt(a1, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
	int c2p[2], p2c[2];
	if (pipe(c2p) || pipe(p2c))
		fail("pipe");
	pid_t child = fork();
	if (child == 0) {
		int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(c2, (struct sockaddr *)&a, al))
			_exit(2);
		char x;
		if (write(c2p[1], "c", 1) != 1)
			_exit(3);
		/* after restore: told to write into the accepted connection */
		if (read(p2c[0], &x, 1) != 1)
			_exit(4);
		if (write(c2, "from-child", 10) != 10)
			_exit(5);
		if (read(c2, &x, 1) != 1 || x != 'k')
			_exit(6);
		_exit(0);
	}
	char x;
	if (read(c2p[0], &x, 1) != 1)
		fail("child did not connect");

	/* 3. a listener bound to a relative path, its socket file mode 0640 */
	unlink("us.sock");
	int lp = socket(AF_UNIX, SOCK_STREAM, 0);
	al = mkaddr(&a, "us.sock", 7);
	if (bind(lp, (struct sockaddr *)&a, al) || listen(lp, 3))
		fail("path listener");
	chmod("us.sock", 0640);

	test_ready();
	test_waitsig();

	/* socketpair */
	readall(sp[1], got, BIG, "big");
	if (memcmp(got, big, BIG))
		fail("big data differs");
	if (!(fcntl(sp[1], F_GETFL) & O_NONBLOCK))
		fail("O_NONBLOCK lost");
	if (read(sp[1], got, 10) != -1 || errno != EAGAIN)
		fail("sp[1] has more data");
	if (read(sp[0], got, 10) != 4 || memcmp(got, "ping", 4))
		fail("ping");
	if (read(sp[0], got, 10) != 0)
		fail("no EOF after the peer's SHUT_WR");
	if (write(sp[1], "x", 1) != -1 || errno != EPIPE)
		fail("write after SHUT_WR did not fail with EPIPE");
	if (write(sp[0], "more", 4) != 4 || read(sp[1], got, 4) != 4 || memcmp(got, "more", 4))
		fail("sp 0->1 broken");
	check_cred(sp[0], me, "socketpair");
	check_cred(sp[1], me, "socketpair");
	ol = sizeof(sz);
	getsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sz, &ol);
	if (sz != sndbuf)
		fail("SO_SNDBUF %d, want %d", sz, sndbuf);

	/* accepted connection */
	if (read(a1, got, 100) != 7 || memcmp(got, "request", 7))
		fail("request");
	if (read(c1, got, 100) != 8 || memcmp(got, "response", 8))
		fail("response");
	check_name(a1, 0, ABS, sizeof(ABS) - 1, "accepted end");
	check_name(c1, 1, ABS, sizeof(ABS) - 1, "client's peer");
	check_cred(c1, me, "client");
	check_cred(a1, me, "accepted");
	ol = sizeof(one);
	one = 0;
	getsockopt(a1, SOL_SOCKET, SO_PASSCRED, &one, &ol);
	if (!one)
		fail("SO_PASSCRED lost");
	if (write(c1, "again", 5) != 5 || read(a1, got, 5) != 5 || memcmp(got, "again", 5))
		fail("c1->a1 broken");

	/* the pending connection: accept it now, its credentials are the child's */
	fcntl(l, F_SETFL, O_NONBLOCK);
	int a2 = accept(l, NULL, NULL);
	if (a2 < 0)
		fail("no pending connection after restore");
	check_cred(a2, child, "pending connection");
	if (accept(l, NULL, NULL) != -1 || errno != EAGAIN)
		fail("more than one pending connection");
	if (write(p2c[1], "g", 1) != 1)
		fail("wake child");
	if (read(a2, got, 10) != 10 || memcmp(got, "from-child", 10))
		fail("data from the child");
	if (write(a2, "k", 1) != 1)
		fail("write to child");
	int st;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st))
		fail("child exit status %x", st);

	/* a new client reaches the abstract listener */
	int c3 = socket(AF_UNIX, SOCK_STREAM, 0);
	al = mkaddr(&a, ABS, sizeof(ABS) - 1);
	if (connect(c3, (struct sockaddr *)&a, al))
		fail("new connect to the abstract name");
	int a3 = accept(l, NULL, NULL);
	if (a3 < 0 || write(c3, "new", 3) != 3 || read(a3, got, 3) != 3)
		fail("new connection");

	/* the path listener: the file is there (mode kept) and takes connections */
	struct stat sb;
	if (stat("/zdtm/us.sock", &sb) || !S_ISSOCK(sb.st_mode) || (sb.st_mode & 0777) != 0640)
		fail("socket file: mode %o", sb.st_mode);
	int c4 = socket(AF_UNIX, SOCK_STREAM, 0);
	al = mkaddr(&a, "/zdtm/us.sock", 13);
	if (connect(c4, (struct sockaddr *)&a, al))
		fail("connect to the path listener");
	int a4 = accept(lp, NULL, NULL);
	if (a4 < 0)
		fail("accept on the path listener");
	check_name(a4, 0, "us.sock", 7, "path listener's accepted end");
	check_name(lp, 0, "us.sock", 7, "path listener");
	unlink("us.sock");
	pass();
}
