/* Unix seqpacket sockets: a socketpair with messages queued both ways (an empty one
 * and a large one among them), a listener on a path with an accepted connection
 * (half shut down, data queued) and a pending one.  After restore every message
 * arrives once with its boundaries, shutdowns hold, and the listener takes more. */
#include "zdtmlib.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#define PATH "/zdtm/usq.sock"
#define LARGE 30000

static socklen_t mkaddr(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strcpy(a->sun_path, name);
	return offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1;
}

static char rbuf[LARGE * 2];

static void expect(int fd, const char *data, size_t len, const char *what)
{
	struct iovec iov = {rbuf, sizeof(rbuf)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
	if (n < 0)
		fail("%s: recvmsg", what);
	if ((size_t)n != len || memcmp(rbuf, data, len) || (mh.msg_flags & MSG_TRUNC))
		fail("%s: got %zd bytes, want %zu", what, n, len);
}

static void sendall(int fd, const char *data, size_t len)
{
	if (send(fd, data, len, 0) != (ssize_t)len)
		fail("send %zu", len);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	/* writes to closed peers must fail with EPIPE, not kill us */
	signal(SIGPIPE, SIG_IGN);
	static char large[LARGE];
	for (int i = 0; i < LARGE; i++)
		large[i] = (char)(i * 13 + 5);
	struct sockaddr_un a;
	socklen_t al;
	pid_t me = getpid();

	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp))
		fail("socketpair");
	sendall(sp[0], "one", 3);
	sendall(sp[0], "", 0);
	sendall(sp[0], large, LARGE);
	sendall(sp[0], "four", 4);
	sendall(sp[1], "back", 4);

	unlink(PATH);
	int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	al = mkaddr(&a, PATH);
	if (bind(l, (struct sockaddr *)&a, al) || listen(l, 4))
		fail("listener");
	int c1 = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	if (connect(c1, (struct sockaddr *)&a, al))
		fail("connect c1");
	int a1 = accept(l, NULL, NULL);
	if (a1 < 0)
		fail("accept");
	sendall(c1, "req-1", 5);
	sendall(c1, "req-2", 5);
	sendall(a1, "resp", 4);
	if (shutdown(a1, SHUT_WR))
		fail("shutdown");
	int c2 = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	if (connect(c2, (struct sockaddr *)&a, al))
		fail("connect c2");

	test_ready();
	test_waitsig();

	expect(sp[1], "one", 3, "one");
	expect(sp[1], "", 0, "empty");
	expect(sp[1], large, LARGE, "large");
	expect(sp[1], "four", 4, "four");
	if (recv(sp[1], rbuf, 10, MSG_DONTWAIT) != -1 || errno != EAGAIN)
		fail("sp[1] has more");
	expect(sp[0], "back", 4, "back");
	struct ucred cr;
	socklen_t cl = sizeof(cr);
	if (getsockopt(sp[0], SOL_SOCKET, SO_PEERCRED, &cr, &cl) || cr.pid != me)
		fail("SO_PEERCRED pid %d", cr.pid);
	sendall(sp[1], "again", 5);
	expect(sp[0], "again", 5, "again");

	expect(a1, "req-1", 5, "req-1");
	expect(a1, "req-2", 5, "req-2");
	expect(c1, "resp", 4, "resp");
	if (recv(c1, rbuf, 10, MSG_DONTWAIT) != 0)
		fail("no EOF on c1 after a1's SHUT_WR");
	if (send(a1, "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		fail("a1 can still send");
	sendall(c1, "more", 4);
	expect(a1, "more", 4, "more");

	int a2 = accept(l, NULL, NULL);
	if (a2 < 0)
		fail("pending connection lost");
	sendall(c2, "pending", 7);
	expect(a2, "pending", 7, "pending");
	cl = sizeof(cr);
	if (getsockopt(a2, SOL_SOCKET, SO_PEERCRED, &cr, &cl) || cr.pid != me)
		fail("pending SO_PEERCRED pid %d", cr.pid);
	int c3 = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	al = mkaddr(&a, PATH);
	if (connect(c3, (struct sockaddr *)&a, al))
		fail("new connect");
	int a3 = accept(l, NULL, NULL);
	if (a3 < 0)
		fail("new accept");
	sendall(c3, "n", 1);
	expect(a3, "n", 1, "new");
	unlink(PATH);
	pass();
}
