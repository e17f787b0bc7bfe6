/* UDP sockets: bound to the wildcard and to loopback, connected, with datagram
 * options (SO_BROADCAST, IP_TOS, IP_RECVTTL, IP_PKTINFO, a fixed SO_RCVBUF), a
 * UDP-Lite socket, and a raw ICMP socket with an ICMP filter.  After restore: same
 * addresses, peers and options, and datagrams flow between them. */
#include "zdtmlib.h"
#include <arpa/inet.h>
#include <linux/icmp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#ifndef IPPROTO_UDPLITE
#define IPPROTO_UDPLITE 136
#endif

static int getint(int fd, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof(v);
	if (getsockopt(fd, level, opt, &v, &len)) fail("getsockopt %d/%d", level, opt);
	return v;
}

static void addr_of(int fd, int peer, char *buf, size_t n)
{
	struct sockaddr_in sa = {0};
	socklen_t len = sizeof(sa);
	if ((peer ? getpeername : getsockname)(fd, (void *)&sa, &len)) {
		snprintf(buf, n, "none(%d)", errno);
		return;
	}
	char a[32];
	inet_ntop(AF_INET, &sa.sin_addr, a, sizeof(a));
	snprintf(buf, n, "%s:%d", a, ntohs(sa.sin_port));
}

static int udp(int proto, const char *ip, int port)
{
	int fd = socket(AF_INET, SOCK_DGRAM, proto);
	if (fd < 0) fail("socket %d", proto);
	if (ip) {
		struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
		inet_pton(AF_INET, ip, &sa.sin_addr);
		if (bind(fd, (void *)&sa, sizeof(sa))) fail("bind %s:%d", ip, port);
	}
	return fd;
}

static void to(int fd, const char *msg, int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	if (sendto(fd, msg, strlen(msg), 0, (void *)&sa, sizeof(sa)) != (ssize_t)strlen(msg)) fail("sendto %d", port);
}

static void expect(int fd, const char *msg, const char *what)
{
	char buf[64] = {0};
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	ssize_t r = recv(fd, buf, sizeof(buf) - 1, 0);
	if (r < 0 || strcmp(buf, msg)) fail("%s: got '%s' (%zd), want '%s'", what, buf, r, msg);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int one = 1, tos = 0x10, rcvbuf = 50000;
	int any = udp(0, "0.0.0.0", 5353);
	setsockopt(any, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
	setsockopt(any, IPPROTO_IP, IP_RECVTTL, &one, sizeof(one));
	setsockopt(any, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
	int lo = udp(0, "127.0.0.1", 0);
	setsockopt(lo, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
	setsockopt(lo, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	int conn = udp(0, NULL, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	getsockname(lo, (void *)&sa, &len);
	if (connect(conn, (void *)&sa, sizeof(sa))) fail("connect");
	int lite = udp(IPPROTO_UDPLITE, "127.0.0.1", 6000);
	int raw = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	if (raw < 0) fail("raw socket");
	struct icmp_filter flt = {.data = ~(1U << ICMP_ECHOREPLY)};
	if (setsockopt(raw, SOL_RAW, ICMP_FILTER, &flt, sizeof(flt))) fail("ICMP_FILTER");
	int unbound = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);

	int fds[5] = {any, lo, conn, lite, unbound};
	char before[5][2][64];
	for (int i = 0; i < 5; i++) {
		addr_of(fds[i], 0, before[i][0], 64);
		addr_of(fds[i], 1, before[i][1], 64);
	}
	test_ready();
	test_waitsig();

	for (int i = 0; i < 5; i++) {
		char now[2][64];
		addr_of(fds[i], 0, now[0], 64);
		addr_of(fds[i], 1, now[1], 64);
		if (strcmp(now[0], before[i][0]) || strcmp(now[1], before[i][1]))
			fail("socket %d: %s->%s became %s->%s", i, before[i][0], before[i][1], now[0], now[1]);
	}
	if (!getint(any, SOL_SOCKET, SO_BROADCAST)) fail("SO_BROADCAST lost");
	if (!getint(any, IPPROTO_IP, IP_RECVTTL)) fail("IP_RECVTTL lost");
	if (!getint(any, IPPROTO_IP, IP_PKTINFO)) fail("IP_PKTINFO lost");
	if (getint(lo, IPPROTO_IP, IP_TOS) != tos) fail("IP_TOS");
	if (getint(lo, SOL_SOCKET, SO_RCVBUF) != 2 * rcvbuf) fail("SO_RCVBUF %d", getint(lo, SOL_SOCKET, SO_RCVBUF));
	if (getint(lite, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_UDPLITE) fail("UDP-Lite became %d", getint(lite, SOL_SOCKET, SO_PROTOCOL));
	if (getint(raw, SOL_SOCKET, SO_TYPE) != SOCK_RAW || getint(raw, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_ICMP) fail("raw socket kind");
	struct icmp_filter f2 = {0};
	len = sizeof(f2);
	if (getsockopt(raw, SOL_RAW, ICMP_FILTER, &f2, &len) || f2.data != flt.data) fail("ICMP_FILTER %#x", f2.data);
	if (!(fcntl(unbound, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");

	/* datagrams flow between the restored sockets */
	if (send(conn, "one", 3, 0) != 3) fail("send on connected");
	expect(lo, "one", "connected -> lo");
	to(lo, "two", 5353);
	expect(any, "two", "lo -> any");
	to(lite, "three", 6000); /* UDP-Lite only talks to UDP-Lite: to itself */
	expect(lite, "three", "udplite -> udplite");
	to(unbound, "four", 5353);
	expect(any, "four", "unbound -> any");
	pass();
}
