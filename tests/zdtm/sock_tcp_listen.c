/* Listening TCP sockets (any address, loopback, IPv6 only, a given backlog, options
 * inherited by accepted sockets), a socket bound but not listening, and a socket
 * never bound; a connection accepted from the wildcard listener shares its port.
 * After restore: same addresses, backlogs and options, and each listener accepts. */
#include "zdtmlib.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static int getint(int fd, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof(v);
	if (getsockopt(fd, level, opt, &v, &len)) fail("getsockopt %d/%d", level, opt);
	return v;
}

static int port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (void *)&ss, &len)) fail("getsockname");
	return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					      : ((struct sockaddr_in *)&ss)->sin_port);
}

static int backlog_of(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len)) fail("TCP_INFO");
	return ti.tcpi_sacked; /* sk_max_ack_backlog on a listener */
}

static int listener4(const char *ip, int backlog, int reuse)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	if (reuse) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	inet_pton(AF_INET, ip, &sa.sin_addr);
	if (bind(fd, (void *)&sa, sizeof(sa)) || listen(fd, backlog)) fail("listener %s", ip);
	return fd;
}

static void check_accepts(int l, int fam, const char *ip, const char *what)
{
	struct sockaddr_storage ss = {0};
	socklen_t len;
	int c = socket(fam, SOCK_STREAM, 0);
	if (fam == AF_INET6) {
		struct sockaddr_in6 *s6 = (void *)&ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port_of(l));
		inet_pton(AF_INET6, ip, &s6->sin6_addr);
		len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (void *)&ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port_of(l));
		inet_pton(AF_INET, ip, &s4->sin_addr);
		len = sizeof(*s4);
	}
	if (connect(c, (void *)&ss, len)) fail("%s: connect after restore", what);
	int a = accept(l, NULL, NULL);
	if (a < 0) fail("%s: accept after restore", what);
	if (write(c, "ping", 4) != 4) fail("%s: write", what);
	char buf[8] = {0};
	if (read(a, buf, sizeof(buf)) != 4 || memcmp(buf, "ping", 4)) fail("%s: data", what);
	close(a);
	close(c);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int any = listener4("0.0.0.0", 128, 1);
	int lo = listener4("127.0.0.1", 7, 0);
	int one = 1, idle = 77;
	setsockopt(lo, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(lo, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(lo, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	int defer = 5;
	setsockopt(any, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer));

	int l6 = socket(AF_INET6, SOCK_STREAM, 0);
	setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
	if (bind(l6, (void *)&s6, sizeof(s6)) || listen(l6, 3)) fail("v6 listener");

	/* bound, not listening; and never bound */
	int bound = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sb = {.sin_family = AF_INET, .sin_port = htons(4444)};
	inet_pton(AF_INET, "127.0.0.1", &sb.sin_addr);
	setsockopt(bound, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(bound, (void *)&sb, sizeof(sb))) fail("bind 4444");
	int fresh = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	/* an accepted connection on the wildcard listener's port, kept open */
	int c = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sc = {.sin_family = AF_INET, .sin_port = htons(port_of(any))};
	inet_pton(AF_INET, "127.0.0.1", &sc.sin_addr);
	if (connect(c, (void *)&sc, sizeof(sc))) fail("connect any");
	if (write(c, "x", 1) != 1) fail("write x"); /* TCP_DEFER_ACCEPT wants data */
	int acc = accept(any, NULL, NULL);
	if (acc < 0) fail("accept any");

	int ports[3] = {port_of(any), port_of(lo), port_of(l6)};
	int backlogs[3] = {backlog_of(any), backlog_of(lo), backlog_of(l6)};
	test_ready();
	test_waitsig();

	int lst[3] = {any, lo, l6};
	for (int i = 0; i < 3; i++) {
		if (port_of(lst[i]) != ports[i]) fail("listener %d: port %d became %d", i, ports[i], port_of(lst[i]));
		if (!getint(lst[i], SOL_SOCKET, SO_ACCEPTCONN)) fail("listener %d: not listening", i);
		if (backlog_of(lst[i]) != backlogs[i]) fail("listener %d: backlog %d became %d", i, backlogs[i], backlog_of(lst[i]));
	}
	if (!getint(any, SOL_SOCKET, SO_REUSEADDR)) fail("any: SO_REUSEADDR lost");
	if (getint(lo, SOL_SOCKET, SO_REUSEADDR)) fail("lo: SO_REUSEADDR appeared");
	if (!getint(lo, IPPROTO_TCP, TCP_NODELAY)) fail("lo: TCP_NODELAY lost");
	if (!getint(lo, SOL_SOCKET, SO_KEEPALIVE)) fail("lo: SO_KEEPALIVE lost");
	if (getint(lo, IPPROTO_TCP, TCP_KEEPIDLE) != 77) fail("lo: TCP_KEEPIDLE");
	if (getint(any, IPPROTO_TCP, TCP_DEFER_ACCEPT) == 0) fail("any: TCP_DEFER_ACCEPT lost");
	if (!getint(l6, IPPROTO_IPV6, IPV6_V6ONLY)) fail("l6: IPV6_V6ONLY lost");
	if (port_of(bound) != 4444 || getint(bound, SOL_SOCKET, SO_ACCEPTCONN)) fail("bound socket");
	if (!getint(bound, SOL_SOCKET, SO_REUSEADDR)) fail("bound: SO_REUSEADDR lost");
	if (port_of(fresh) != 0) fail("fresh socket got a port");
	if (!(fcntl(fresh, F_GETFL) & O_NONBLOCK)) fail("fresh: O_NONBLOCK lost");
	if (port_of(acc) != ports[0]) fail("accepted socket port");

	check_accepts(any, AF_INET, "127.0.0.1", "any");
	check_accepts(lo, AF_INET, "127.0.0.1", "lo");
	check_accepts(l6, AF_INET6, "::1", "l6");
	/* the restored bound socket can listen, the fresh one connect */
	if (listen(bound, 2)) fail("listen on the bound socket");
	fcntl(fresh, F_SETFL, 0);
	struct sockaddr_in sl = {.sin_family = AF_INET, .sin_port = htons(4444)};
	inet_pton(AF_INET, "127.0.0.1", &sl.sin_addr);
	if (connect(fresh, (void *)&sl, sizeof(sl))) fail("fresh socket connect");
	/* the kept connection still works */
	if (write(c, "yz", 2) != 2) fail("kept connection write");
	char buf[4] = {0};
	for (int got = 0; got < 3;) {
		ssize_t r = read(acc, buf + got, 3 - got);
		if (r <= 0) fail("kept connection read");
		got += r;
	}
	if (memcmp(buf, "xyz", 3)) fail("kept connection data '%s'", buf);
	pass();
}
