/* IPv6 sockets: a connection over ::1 with data queued both ways, an IPv4-mapped
 * connection (an IPv6 socket talking to 127.0.0.1), a dual-stack listener, a UDPv6
 * pair.  After restore: same addresses, every byte, and new traffic. */
#include "zdtmlib.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void name6(int fd, int peer, char *buf, size_t n)
{
	struct sockaddr_in6 sa = {0};
	socklen_t len = sizeof(sa);
	if ((peer ? getpeername : getsockname)(fd, (void *)&sa, &len)) fail("getname");
	char a[64];
	inet_ntop(AF_INET6, &sa.sin6_addr, a, sizeof(a));
	snprintf(buf, n, "[%s]:%d", a, ntohs(sa.sin6_port));
}

static int listen6(const char *ip, int v6only)
{
	struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
	inet_pton(AF_INET6, ip, &sa.sin6_addr);
	int fd = socket(AF_INET6, SOCK_STREAM, 0);
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
	if (bind(fd, (void *)&sa, sizeof(sa)) || listen(fd, 8)) fail("listen %s", ip);
	return fd;
}

static int port6(int fd)
{
	struct sockaddr_in6 sa;
	socklen_t len = sizeof(sa);
	getsockname(fd, (void *)&sa, &len);
	return ntohs(sa.sin6_port);
}

static void xfer(int from, int to, const char *msg, const char *what)
{
	size_t n = strlen(msg);
	if (write(from, msg, n) != (ssize_t)n) fail("%s: write", what);
	char buf[256] = {0};
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(to, buf + got, sizeof(buf) - 1 - got);
		if (r <= 0) fail("%s: read", what);
		got += r;
	}
	if (strcmp(buf, msg)) fail("%s: got '%s'", what, buf);
}

static void drain(int fd, const char *msg, const char *what)
{
	char buf[256] = {0};
	size_t got = 0, n = strlen(msg);
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r <= 0) fail("%s: read queued", what);
		got += r;
	}
	if (strcmp(buf, msg)) fail("%s: queued data '%s'", what, buf);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int l6 = listen6("::1", 1);
	int dual = listen6("::", 0);
	/* over ::1 */
	int c6 = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons(port6(l6)), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	if (connect(c6, (void *)&sa, sizeof(sa))) fail("connect ::1");
	int a6 = accept(l6, NULL, NULL);
	/* IPv4-mapped: an IPv6 socket to 127.0.0.1 through the dual-stack listener */
	int cm = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 sm = {.sin6_family = AF_INET6, .sin6_port = htons(port6(dual))};
	inet_pton(AF_INET6, "::ffff:127.0.0.1", &sm.sin6_addr);
	if (connect(cm, (void *)&sm, sizeof(sm))) fail("connect mapped");
	int am = accept(dual, NULL, NULL);
	if (a6 < 0 || am < 0) fail("accept");
	/* data waiting in both directions */
	if (write(c6, "to-server-6", 11) != 11 || write(a6, "to-client-6", 11) != 11) fail("write 6");
	if (write(cm, "to-server-m", 11) != 11 || write(am, "to-client-m", 11) != 11) fail("write m");
	/* UDPv6 */
	int u1 = socket(AF_INET6, SOCK_DGRAM, 0), u2 = socket(AF_INET6, SOCK_DGRAM, 0);
	struct sockaddr_in6 su = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	if (bind(u1, (void *)&su, sizeof(su))) fail("bind u1");
	socklen_t len = sizeof(su);
	getsockname(u1, (void *)&su, &len);
	if (connect(u2, (void *)&su, sizeof(su))) fail("connect u2");

	int fds[6] = {c6, a6, cm, am, u1, u2};
	char before[6][2][96];
	for (int i = 0; i < 6; i++) {
		name6(fds[i], 0, before[i][0], 96);
		if (i != 4) name6(fds[i], 1, before[i][1], 96);
	}
	usleep(100000);
	test_ready();
	test_waitsig();

	for (int i = 0; i < 6; i++) {
		char now[2][96];
		name6(fds[i], 0, now[0], 96);
		if (strcmp(now[0], before[i][0])) fail("socket %d: local %s became %s", i, before[i][0], now[0]);
		if (i == 4) continue;
		name6(fds[i], 1, now[1], 96);
		if (strcmp(now[1], before[i][1])) fail("socket %d: peer %s became %s", i, before[i][1], now[1]);
	}
	if (!strstr(before[2][0], "::ffff:127.0.0.1")) fail("mapped socket is %s", before[2][0]);
	drain(a6, "to-server-6", "::1 server");
	drain(c6, "to-client-6", "::1 client");
	drain(am, "to-server-m", "mapped server");
	drain(cm, "to-client-m", "mapped client");
	xfer(c6, a6, "more over ::1", "::1");
	xfer(am, cm, "more over mapped", "mapped");
	if (send(u2, "dgram6", 6, 0) != 6) fail("udp6 send");
	char buf[16] = {0};
	if (recv(u1, buf, sizeof(buf), 0) != 6 || strcmp(buf, "dgram6")) fail("udp6 recv '%s'", buf);
	/* the listeners still accept */
	int c2 = socket(AF_INET6, SOCK_STREAM, 0);
	if (connect(c2, (void *)&sa, sizeof(sa)) || accept(l6, NULL, NULL) < 0) fail("::1 listener after restore");
	pass();
}
