/* Unix sockets whose peer has closed: a stream socket with data from its peer still
 * to read, whose peer closed with data unread (ECONNRESET pending); an accepted
 * connection whose client closed; a client whose accepted end closed; a datagram socket
 * connected to a named socket that closed (queued datagram from it); the end of a
 * datagram socketpair whose twin closed.  After restore each reads what was queued,
 * then sees exactly what it would have seen. */
#include "zdtmlib.h"
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#define LNAME "\0zdtm-upc-listen"
#define DNAME "\0zdtm-upc-dgram"

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, size_t len)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	memcpy(a->sun_path, name, len);
	return offsetof(struct sockaddr_un, sun_path) + len;
}

static int sock_error(int fd)
{
	int e = 0;
	socklen_t l = sizeof(e);
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l))
		fail("SO_ERROR");
	return e;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	/* writes to closed peers must fail with EPIPE, not kill us */
	signal(SIGPIPE, SIG_IGN);
	char buf[64];
	struct sockaddr_un a;
	socklen_t al;

	/* x: the peer wrote "bye" and closed with "unread" in its own queue */
	int x[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, x))
		fail("socketpair");
	if (write(x[1], "bye", 3) != 3 || write(x[0], "unread", 6) != 6)
		fail("writes");
	close(x[1]);

	/* y: the peer closed with nothing unread: plain EOF */
	int y[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, y) || write(y[1], "last", 4) != 4)
		fail("y");
	close(y[1]);

	/* an accepted connection whose client closed, a client whose accepted end closed */
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	al = mkaddr(&a, LNAME, sizeof(LNAME) - 1);
	if (bind(l, (struct sockaddr *)&a, al) || listen(l, 2))
		fail("listen");
	int c1 = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(c1, (struct sockaddr *)&a, al))
		fail("connect c1");
	int a1 = accept(l, NULL, NULL);
	if (write(c1, "from-c1", 7) != 7)
		fail("c1 write");
	close(c1);
	int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(c2, (struct sockaddr *)&a, al))
		fail("connect c2");
	int a2 = accept(l, NULL, NULL);
	if (write(a2, "from-a2", 7) != 7)
		fail("a2 write");
	close(a2);

	/* datagram: connected to a named socket that sent one datagram, then closed */
	int d = socket(AF_UNIX, SOCK_DGRAM, 0);
	int dpeer = socket(AF_UNIX, SOCK_DGRAM, 0);
	al = mkaddr(&a, DNAME, sizeof(DNAME) - 1);
	if (bind(dpeer, (struct sockaddr *)&a, al) || connect(d, (struct sockaddr *)&a, al))
		fail("dgram connect");
	struct sockaddr_un da;
	socklen_t dal = sizeof(da);
	getsockname(d, (struct sockaddr *)&da, &dal);
	if (dal <= offsetof(struct sockaddr_un, sun_path)) {
		/* d is unnamed: give it a name so that dpeer can reply */
		dal = mkaddr(&da, "\0zdtm-upc-d", 11);
		if (bind(d, (struct sockaddr *)&da, dal))
			fail("bind d");
	}
	if (sendto(dpeer, "dgram-last", 10, 0, (struct sockaddr *)&da, dal) != 10)
		fail("dpeer send");
	close(dpeer);

	/* datagram socketpair whose twin closed after sending */
	int dp[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) || send(dp[1], "twin", 4, 0) != 4)
		fail("dgram pair");
	close(dp[1]);

	test_ready();
	test_waitsig();

	/* x */
	struct pollfd pf = {.fd = x[0], .events = POLLIN};
	if (poll(&pf, 1, 0) != 1 || !(pf.revents & POLLERR) || !(pf.revents & POLLHUP))
		fail("x: poll revents %x", pf.revents);
	if (sock_error(x[0]) != ECONNRESET)
		fail("x: no pending ECONNRESET");
	if (read(x[0], buf, 10) != 3 || memcmp(buf, "bye", 3))
		fail("x: data from the closed peer");
	if (read(x[0], buf, 10) != 0)
		fail("x: no EOF");
	if (send(x[0], "w", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		fail("x: send did not fail with EPIPE");

	/* y */
	if (sock_error(y[0]) != 0)
		fail("y: unexpected error");
	if (read(y[0], buf, 10) != 4 || memcmp(buf, "last", 4) || read(y[0], buf, 10) != 0)
		fail("y: data then EOF");

	/* a1, c2 */
	if (read(a1, buf, 10) != 7 || memcmp(buf, "from-c1", 7) || read(a1, buf, 10) != 0)
		fail("a1: data then EOF");
	al = sizeof(a);
	if (getsockname(a1, (struct sockaddr *)&a, &al) || memcmp(a.sun_path, LNAME, sizeof(LNAME) - 1))
		fail("a1: name");
	if (read(c2, buf, 10) != 7 || memcmp(buf, "from-a2", 7) || read(c2, buf, 10) != 0)
		fail("c2: data then EOF");
	al = sizeof(a);
	if (getpeername(c2, (struct sockaddr *)&a, &al) || memcmp(a.sun_path, LNAME, sizeof(LNAME) - 1))
		fail("c2: peer name");

	/* d */
	if (recv(d, buf, 20, MSG_DONTWAIT) != 10 || memcmp(buf, "dgram-last", 10))
		fail("d: queued datagram");
	al = sizeof(a);
	if (getpeername(d, (struct sockaddr *)&a, &al) || memcmp(a.sun_path, DNAME, sizeof(DNAME) - 1))
		fail("d: peer name");
	if (send(d, "x", 1, 0) != -1 || errno != ECONNREFUSED)
		fail("d: send to the closed peer did not fail with ECONNREFUSED");

	/* dp */
	if (recv(dp[0], buf, 10, MSG_DONTWAIT) != 4 || memcmp(buf, "twin", 4))
		fail("dp: queued datagram");
	if (send(dp[0], "x", 1, 0) != -1 || errno != ECONNREFUSED)
		fail("dp: send to the closed twin did not fail with ECONNREFUSED");

	/* the listener still works */
	int c3 = socket(AF_UNIX, SOCK_STREAM, 0);
	al = mkaddr(&a, LNAME, sizeof(LNAME) - 1);
	if (connect(c3, (struct sockaddr *)&a, al) || accept(l, NULL, NULL) < 0)
		fail("new connection");
	pass();
}
