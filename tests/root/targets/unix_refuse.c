/* Holds one kind of unix socket state vzpy refuses to checkpoint (argv[1]), prints
 * "fd N" for the socket the refusal must name, then, once the refused dump has thawed
 * it, checks that the socket's state was left as it was:
 *   host_peer       connected to a daemon outside the container (/zdtm/host.sock)
 *   host_socket     holds a socket of the host's network namespace (passed in by it)
 *   host_pending    connected to a listener outside that has not accepted yet
 *   pending_data    a connection not accepted yet whose client already sent data
 *   seqpacket_error a seqpacket socket with ECONNRESET pending (reading would clear it) */
#include "zdtmlib.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, size_t len)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	memcpy(a->sun_path, name, len);
	return offsetof(struct sockaddr_un, sun_path) + len;
}

static int host_conn(void)
{
	struct sockaddr_un a;
	socklen_t al = mkaddr(&a, "/zdtm/host.sock", 15);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(s, (struct sockaddr *)&a, al))
		fail("connect to the host daemon");
	return s;
}

static void echo(int s, const char *msg)
{
	char buf[32];
	size_t n = strlen(msg);
	if (write(s, msg, n) != (ssize_t)n || read(s, buf, sizeof(buf)) != (ssize_t)n || memcmp(buf, msg, n))
		fail("echo '%s'", msg);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	const char *kind = argc > 1 ? argv[1] : "";
	char buf[32];
	int fd = -1, aux = -1;
	struct sockaddr_un a;
	socklen_t al;
	if (!strcmp(kind, "host_peer")) {
		fd = host_conn();
		echo(fd, "hello");
	} else if (!strcmp(kind, "host_socket")) {
		int s = host_conn();
		if (write(s, "fd?", 3) != 3)
			fail("ask for a socket");
		char cbuf[CMSG_SPACE(sizeof(int))];
		struct iovec iov = {buf, 1};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
		if (recvmsg(s, &mh, 0) != 1 || !CMSG_FIRSTHDR(&mh))
			fail("no socket from the host");
		memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
		close(s);
	} else if (!strcmp(kind, "host_pending")) {
		al = mkaddr(&a, "/zdtm/host-noaccept.sock", 24);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&a, al))
			fail("connect to the host listener");
	} else if (!strcmp(kind, "pending_data")) {
		aux = socket(AF_UNIX, SOCK_STREAM, 0);
		al = mkaddr(&a, "\0zdtm-refuse-l", 14);
		if (bind(aux, (struct sockaddr *)&a, al) || listen(aux, 2))
			fail("listen");
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&a, al) || write(fd, "early", 5) != 5)
			fail("connect");
	} else if (!strcmp(kind, "seqpacket_error")) {
		int x[2];
		if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, x) || write(x[1], "bye", 3) != 3 ||
		    write(x[0], "unread", 6) != 6)
			fail("socketpair");
		close(x[1]);
		fd = x[0];
	} else {
		fail("unknown kind %s", kind);
	}
	printf("fd %d\n", fd);
	fflush(stdout);
	test_ready();
	test_waitsig();
	if (!strcmp(kind, "host_peer")) {
		echo(fd, "again");
	} else if (!strcmp(kind, "host_socket")) {
		if (read(fd, buf, 8) != 8 || memcmp(buf, "hostpair", 8))
			fail("data in the host's socket");
	} else if (!strcmp(kind, "host_pending")) {
		if (write(fd, "x", 1) != 1)
			fail("write to the host listener's connection");
	} else if (!strcmp(kind, "pending_data")) {
		int c = accept(aux, NULL, NULL);
		if (c < 0 || read(c, buf, 10) != 5 || memcmp(buf, "early", 5))
			fail("the pending connection's data");
	} else {
		int e = 0;
		socklen_t l = sizeof(e);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) || e != ECONNRESET)
			fail("the pending ECONNRESET was lost (%d)", e);
		if (read(fd, buf, 10) != 3 || memcmp(buf, "bye", 3))
			fail("queued message");
	}
	pass();
}
